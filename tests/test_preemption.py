"""Preemption: SIGTERM / SIGINT during ``fit`` save a resumable ``last.ckpt`` and exit 143 / 130.

A real ``python -m llm_modules fit`` process gets the signal in the middle of an optimizer step; it
must finish that step, save, say so in one line and exit with 128 + the signal. Resuming with
``--ckpt_path last`` must then end bitwise where a run that was never stopped ends, with the same
metrics.csv. Also: a full disk while checkpointing is one line naming the file, and the previous
``last.ckpt`` stays intact.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import torch

from llm_modules.cli import main

from _fit_helpers import CONFIGS, launch, metric_rows, tiny
from test_resume import weights_and_optimizer

SIGNAL_MID_STEP = '''
import pathlib, time
from lightning.pytorch.callbacks import Callback
from llm_modules.training.preemption import Preemption

class SignalMidStep(Callback):
    """When step ``step + 1`` is about to take its optimizer step, write ``marker`` (the test then
    sends its signal) and wait until the run's Preemption callback has seen a signal: the signal
    lands in the middle of a step, deterministically."""

    def __init__(self, step: int, marker: str):
        self.step, self.marker = step, marker

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if trainer.global_step != self.step:
            return
        watcher = next(c for c in trainer.callbacks if isinstance(c, Preemption))
        pathlib.Path(self.marker).write_text(str(self.step))
        deadline = time.monotonic() + 120
        while watcher.requested is None and time.monotonic() < deadline:
            time.sleep(0.02)
'''

SIGNALLED_AT = 5  # the signal comes during step 6: the first step of epoch 1, a validation step
STEPS = 9  # validation (and so last.ckpt) at steps 3, 6 and 9


def fit_args(corpus: Path, cache: Path) -> list[str]:
    """BERT MLM with dropout (global and collator random state both matter), 5-batch epochs,
    validation every 3 steps, deterministic kernels, a metrics row per step."""
    return ["fit", *tiny(
        CONFIGS / "bert-mlm.yaml", corpus, cache,
        "--data.init_args.samples_per_epoch", "40",
        "--model.init_args.config.dropout", "0.1",
        "--trainer.val_check_interval", "3",
        "--trainer.deterministic", "true",
        "--trainer.log_every_n_steps", "1",
        steps=STEPS,
    )]


@pytest.fixture(scope="module")
def reference(corpus, cache, tmp_path_factory):
    """The same run, never interrupted (once for the module)."""
    folder = tmp_path_factory.mktemp("reference")
    launch(fit_args(corpus, cache), folder)
    return folder / "runs" / "llm" / "version_0"


def stop_mid_step(args: list[str], cwd: Path, signum: int, env: dict) -> tuple[int, str]:
    """Run ``args`` in ``cwd``; send ``signum`` once step SIGNALLED_AT + 1 is under way. Returns (exit code, output)."""
    marker = cwd / "signal-now"
    helper = f'{{"class_path": "signal_helper.SignalMidStep", "init_args": {{"step": {SIGNALLED_AT}, ' \
             f'"marker": "{marker}"}}}}'
    proc = launch([*args, f"--trainer.callbacks+={helper}"], cwd, env=env, wait=False)
    try:
        deadline = time.monotonic() + 240
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists(), f"the run never reached step {SIGNALLED_AT}:\n{proc.communicate(timeout=60)[0][-4000:]}"
        proc.send_signal(signum)
        out, _ = proc.communicate(timeout=240)
        return proc.returncode, out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=60)


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"])
def test_a_signal_mid_step_saves_last_then_resume_matches_an_uninterrupted_run(
        signum, code, corpus, cache, reference, tmp_path):
    (tmp_path / "signal_helper.py").write_text(SIGNAL_MID_STEP)
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    run = tmp_path / "run"
    run.mkdir()
    args = fit_args(corpus, cache)

    returncode, out = stop_mid_step(args, run, signum, env)
    name = signal.Signals(signum).name
    folder = run / "runs" / "llm" / "version_0"
    last = folder / "checkpoints" / "last.ckpt"
    assert returncode == code, out[-4000:]
    line = (f"llm-modules fit: stopped by {name} at step {SIGNALLED_AT + 1}; saved "
            f"runs/llm/version_0/checkpoints/last.ckpt; resume with --ckpt_path last")
    assert line in out.splitlines(), out[-4000:]
    assert "Traceback" not in out, out[-4000:]
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == SIGNALLED_AT + 1
    assert not [p for p in last.parent.iterdir() if p.name.startswith(".")], "no temporary file is left"

    launch([*args, "--ckpt_path", "last"], run, env=env)
    expected = weights_and_optimizer(reference / "checkpoints" / "last.ckpt")
    got = weights_and_optimizer(last)
    assert expected["global_step"] == STEPS and expected.keys() == got.keys()
    differ = [k for k in expected if not torch.equal(expected[k], got[k])]
    assert not differ, f"{len(differ)} of {len(expected)} tensors differ, e.g. {differ[:3]}"
    for key in ("train/loss", "val/loss"):  # one metrics.csv that reads as the uninterrupted run's
        assert metric_rows(folder, key) == metric_rows(reference, key), key


# ---- a full disk while checkpointing -------------------------------------------------------------------


def test_a_full_disk_while_checkpointing_is_one_line_and_keeps_the_previous_last(
        corpus, cache, tmp_path, monkeypatch, capsys):
    """The second save of last.ckpt writes into a file that is really /dev/full (the kernel says
    ENOSPC, and torch's writer reports it its own way): one line with the reason and the path, a
    non-zero exit, the step-2 last.ckpt intact and no temporary file left."""
    if not os.path.exists("/dev/full"):
        pytest.skip("needs /dev/full (Linux) to make writes fail with ENOSPC")
    import llm_modules.training.checkpoint_io as cio

    real_fdopen, saves = os.fdopen, []

    def fdopen(fd, mode="r", *args, **kwargs):
        name = os.readlink(f"/proc/self/fd/{fd}") if os.path.exists(f"/proc/self/fd/{fd}") else ""
        if Path(name).name.startswith(".last.ckpt."):
            saves.append(name)
            if len(saves) == 2:  # the disk is full from the second save of last.ckpt on
                full = os.open("/dev/full", os.O_WRONLY)
                os.dup2(full, fd)
                os.close(full)
        return real_fdopen(fd, mode, *args, **kwargs)

    monkeypatch.setattr(cio.os, "fdopen", fdopen)
    monkeypatch.chdir(tmp_path)
    code = main(["fit", *tiny(CONFIGS / "quickstart.yaml", corpus, cache, "--checkpoint.every_n_train_steps", "2",
                              steps=4)])
    monkeypatch.undo()
    err = capsys.readouterr().err
    last = tmp_path / "runs" / "llm" / "version_0" / "checkpoints" / "last.ckpt"
    lines = [line for line in err.splitlines() if "error" in line.lower()]
    assert code != 0 and len(saves) == 2, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert len(lines) == 1 and "no space left on device" in lines[0].lower(), err[-3000:]
    assert "runs/llm/version_0/checkpoints/last.ckpt: " in lines[0], err[-3000:]
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 2
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.ckpt"], "the temporary file is removed"
