"""Preemption: SIGTERM / SIGINT during ``fit`` save a resumable ``last.ckpt`` and exit 143 / 130.

A real ``python -m llm_modules fit`` process gets the signal in the middle of an optimizer step; it
must finish that step, save, say so in one line and exit with 128 + the signal. Resuming with
``--ckpt_path last`` must then end bitwise where a run that was never stopped ends, with the same
metrics.csv. Also: a full disk while checkpointing is one line naming the file, and the previous
``last.ckpt`` stays intact.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader

from llm_modules.cli import main
from llm_modules.training.preemption import Preempted, Preemption

from _fit_helpers import CONFIGS, fit_here, metric_rows, tiny
from test_resume import weights_and_optimizer

SIGNAL_MID_STEP = '''
import os, pathlib, time
from lightning.pytorch.callbacks import Callback
from llm_modules.training.preemption import Preemption

class SignalMidStep(Callback):
    """On process ``rank``: when step ``step + 1`` is about to take its optimizer step, write this
    process's id to ``marker`` (the test then signals it) and wait until the run's Preemption callback
    has seen a signal, so the signal lands in the middle of a step, deterministically. While that
    step's checkpoint is being saved, send the same signal once more: a second signal during the save."""

    def __init__(self, step: int, marker: str, rank: int = 0):
        self.step, self.marker, self.rank, self.again = step, marker, rank, True

    def watcher(self, trainer):
        return next(c for c in trainer.callbacks if isinstance(c, Preemption))

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if trainer.global_step != self.step or trainer.global_rank != self.rank:
            return
        pathlib.Path(self.marker + ".tmp").write_text(str(os.getpid()))
        os.replace(self.marker + ".tmp", self.marker)
        deadline = time.monotonic() + 120
        while self.watcher(trainer).requested is None and time.monotonic() < deadline:
            time.sleep(0.02)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        signum = self.watcher(trainer).requested
        if signum and self.again and trainer.global_step == self.step + 1:
            self.again = False
            os.kill(os.getpid(), signum)
'''

SIGNALLED_AT = 5  # the signal comes during step 6: the first step of epoch 1, a validation step
STEPS = 9  # validation (and so last.ckpt) at steps 3, 6 and 9


def fit_args(corpus: Path, cache: Path, *extra: str) -> list[str]:
    """BERT MLM with dropout (global and collator random state both matter), 5-batch epochs,
    validation every 3 steps, every validation's checkpoint kept, deterministic kernels, a metrics
    row per step."""
    return ["fit", *tiny(
        CONFIGS / "bert-mlm.yaml", corpus, cache,
        "--data.init_args.samples_per_epoch", "40",
        "--model.init_args.config.dropout", "0.1",
        "--trainer.val_check_interval", "3",
        "--trainer.deterministic", "true",
        "--trainer.log_every_n_steps", "1",
        "--checkpoint.save_top_k", "-1",
        *extra,
        steps=STEPS,
    )]


@pytest.fixture(scope="module")
def reference(corpus, cache, tmp_path_factory):
    """The same run, never interrupted (once for the module), in this process (``fit_here``)."""
    folder = tmp_path_factory.mktemp("reference")
    fit_here(fit_args(corpus, cache), folder)
    return folder / "runs" / "llm" / "version_0"


def stop_mid_step(args: list[str], cwd: Path, signum: int, rank: int = 0) -> tuple[int, str]:
    """Run ``args`` in ``cwd`` (its own process group); send ``signum`` to process ``rank`` once step
    SIGNALLED_AT + 1 is under way. Returns (exit code, output); every process is gone afterwards."""
    (cwd / "signal_helper.py").write_text(SIGNAL_MID_STEP)
    marker = cwd / "signal-now"
    helper = json.dumps({"class_path": "signal_helper.SignalMidStep",
                         "init_args": {"step": SIGNALLED_AT, "marker": str(marker), "rank": rank}})
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join([str(cwd), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "llm_modules", *args, f"--trainer.callbacks+={helper}"], cwd=cwd,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists(), f"the run never reached step {SIGNALLED_AT}:\n{proc.communicate(timeout=60)[0][-4000:]}"
        os.kill(int(marker.read_text()), signum)
        out, _ = proc.communicate(timeout=240)
        return proc.returncode, out
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # DDP ranks too; nothing is left when the run has exited
        if proc.poll() is None:
            proc.communicate(timeout=60)


def check_stopped(returncode: int, out: str, signum: int, folder: Path) -> Path:
    """Exit 128 + signal, the one line, last.ckpt at the step the signal came in, no temporary file."""
    name = signal.Signals(signum).name
    assert returncode == 128 + signum, out[-4000:]
    line = (f"llm-modules fit: stopped by {name} at step {SIGNALLED_AT + 1}; saved "
            f"runs/llm/version_0/checkpoints/last.ckpt; resume with --ckpt_path last")
    assert out.splitlines().count(line) == 1, out[-4000:]
    assert "Traceback" not in out, out[-4000:]
    last = folder / "checkpoints" / "last.ckpt"
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == SIGNALLED_AT + 1
    assert not [p for p in last.parent.iterdir() if p.name.startswith(".")], "no temporary file is left"
    return last


def assert_same_state(expected: Path, got: Path) -> None:
    a, b = weights_and_optimizer(expected), weights_and_optimizer(got)
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"{len(differ)} of {len(a)} tensors differ, e.g. {differ[:3]}"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_mid_step_finishes_the_step_saves_last_and_exits_128_plus_the_signal(
        signum, corpus, cache, reference, tmp_path):
    """The signal comes during step 6 and again during the save: step 6 completes, last.ckpt holds
    exactly the uninterrupted run's step-6 state, exit 143 / 130. SIGTERM's run is then resumed with
    ``--ckpt_path last``: weights, optimizer state and metrics.csv (train and validation losses) end
    bitwise equal to the uninterrupted run's. (SIGINT's checkpoint is the same state, so one resume
    covers both.)"""
    run = tmp_path / "run"
    run.mkdir()
    args = fit_args(corpus, cache)
    returncode, out = stop_mid_step(args, run, signum)
    folder = run / "runs" / "llm" / "version_0"
    last = check_stopped(returncode, out, signum, folder)
    step6 = next((reference / "checkpoints").glob(f"step{SIGNALLED_AT + 1}-*.ckpt"))
    assert_same_state(step6, last)
    if signum != signal.SIGTERM:
        return

    fit_here([*args, "--ckpt_path", "last"], run)  # the resume is not what is signalled: in this process
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == STEPS
    assert_same_state(reference / "checkpoints" / "last.ckpt", last)
    for key in ("train/loss", "val/loss"):  # one metrics.csv that reads as the uninterrupted run's
        assert metric_rows(folder, key) == metric_rows(reference, key), key


def test_under_ddp_a_signal_to_one_rank_stops_every_rank_at_the_same_step(corpus, cache, tmp_path):
    """Two CPU processes (gloo); only rank 1 (a child the launcher started) gets SIGTERM. Both must
    stop after the same step and write the one checkpoint together (the save is collective), rank 0
    reporting it. (With Lightning's own handling rank 1 stopped alone, and rank 0 died in its next
    collective with a gloo "Connection closed by peer" traceback, exit 1, nothing saved.)"""
    args = fit_args(corpus, cache, "--trainer.strategy", "ddp", "--trainer.devices", "2",
                    "--trainer.accelerator", "cpu", "--data.init_args.batch_size", "4")
    returncode, out = stop_mid_step(args, tmp_path, signal.SIGTERM, rank=1)
    check_stopped(returncode, out, signal.SIGTERM, tmp_path / "runs" / "llm" / "version_0")


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


# ---- Ctrl+C before training starts ---------------------------------------------------------------------

INTERRUPT_AT_START = '''
from lightning.pytorch.callbacks import Callback

class CtrlCAtFitStart(Callback):
    def on_fit_start(self, trainer, pl_module):
        raise KeyboardInterrupt  # what SIGINT's default handler raises
'''


def test_ctrl_c_before_training_starts_exits_130_not_lightnings_1(corpus, cache, tmp_path, monkeypatch, capsys):
    """Before the first step there is nothing to save: the process stops at once, but with 130 like
    any interrupted command (Lightning turns a KeyboardInterrupt inside ``fit`` into exit 1)."""
    (tmp_path / "ctrl_c.py").write_text(INTERRUPT_AT_START)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    handler = signal.getsignal(signal.SIGINT)
    try:
        code = main(["fit", *tiny(CONFIGS / "quickstart.yaml", corpus, cache, steps=2),
                     "--trainer.callbacks+=ctrl_c.CtrlCAtFitStart"])
    finally:
        signal.signal(signal.SIGINT, handler)  # Lightning ignores SIGINT from then on
    err = capsys.readouterr().err
    assert code == 130 and err.splitlines()[-1] == "llm-modules fit: interrupted", err[-2000:]
    assert "Traceback" not in err


# ---- the callback in one process -----------------------------------------------------------------------


class Tiny(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def training_step(self, batch, batch_idx):
        return (self.w * batch).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class SignalSelf(Callback):
    """Send this process ``signum`` in the middle of the step after ``step``."""

    def __init__(self, signum: int, step: int):
        self.signum, self.step = signum, step

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_the_callback_stops_every_fit_and_gives_the_handlers_back(signum, tmp_path):
    """Two fits in one process (a notebook): each stops after the signalled step with its checkpoint,
    and afterwards the process's own handlers are back (SIGINT raises KeyboardInterrupt again)."""
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    preemption = Preemption()
    for run, at in (("a", 2), ("b", 4)):
        trainer = L.Trainer(accelerator="cpu", max_steps=20, logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                            default_root_dir=tmp_path / run, callbacks=[preemption, SignalSelf(signum, at)])
        with pytest.raises(Preempted) as stopped:
            trainer.fit(Tiny(), DataLoader(torch.ones(64, 1), batch_size=1))
        assert stopped.value.code == 128 + signum and stopped.value.step == at + 1
        assert stopped.value.path == tmp_path / run / "checkpoints" / "last.ckpt"
        assert torch.load(stopped.value.path, weights_only=True)["global_step"] == at + 1
        assert trainer.received_sigterm == (signum == signal.SIGTERM)
        assert {s: signal.getsignal(s) for s in before} == before


def test_lightnings_own_sigterm_stop_exits_143_not_0(monkeypatch, capsys):
    """validate/test/predict keep Lightning's handling: SIGTERM ends them with SIGTERMException, a
    SystemExit without a code that used to become exit 0."""
    import llm_modules.cli as cli
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    def stopped(command, rest):
        raise SIGTERMException()

    monkeypatch.setattr(cli, "_dispatch", stopped)
    assert main(["validate", "--ckpt_path", "x.ckpt"]) == 143
    assert capsys.readouterr().err == "llm-modules validate: stopped by SIGTERM\n"


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 1.5 MB tmpfs (room for one tiny checkpoint, not for a second beside it); skipped where this
    process may not mount one (not root, no CAP_SYS_ADMIN, not Linux)."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1500k", "tmpfs", str(mount)],
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as err:
        pytest.skip(f"cannot mount a tmpfs here: {err}")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True, timeout=30)


def test_a_real_full_disk_is_one_line_and_leaves_no_temporary_file(corpus, cache, small_tmpfs, monkeypatch, capsys):
    monkeypatch.chdir(small_tmpfs)
    code = main(["fit", *tiny(CONFIGS / "quickstart.yaml", corpus, cache, "--checkpoint.every_n_train_steps", "2",
                              steps=4)])
    err = capsys.readouterr().err
    folder = small_tmpfs / "runs" / "llm" / "version_0" / "checkpoints"
    assert code == 2 and "Traceback" not in err, err[-3000:]
    line = err.splitlines()[-1]
    assert line.startswith("llm-modules fit: error: runs/llm/version_0/checkpoints/") and \
        "No space left on device" in line, err[-3000:]
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".")], "the temporary file is removed"
    for ckpt in folder.glob("*.ckpt"):  # whatever was saved before the disk filled up is whole
        torch.load(ckpt, map_location="cpu", weights_only=True)
