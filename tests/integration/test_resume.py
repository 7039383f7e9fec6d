"""Exact resume and atomic checkpoints.

A run SIGKILLed right after a checkpoint and resumed with ``--ckpt_path last`` must end with bitwise
the same weights (and optimizer state) as a run that was never interrupted: dropout makes the global
RNG matter, masking makes the collator's RNG matter, and a validation pass and an epoch boundary sit
between start and kill. Checkpoint writes must leave the previous file intact when they fail.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from llm_modules.cli import main
from llm_modules.training.checkpoint_io import AtomicCheckpointIO, atomic_torch_save
from llm_modules.training.resume import ExactResume, apply_rng_state, collect_rng_state

from _fit_helpers import CONFIGS, fit_here, launch, metric_rows, reap, tiny

KILLER = '''
import os, signal
from lightning.pytorch.callbacks import Callback

class KillAfterCheckpoint(Callback):
    """SIGKILL at the start of the batch after step ``step``: its checkpoint is on disk by then
    (ModelCheckpoint saves in on_train_batch_end of that step), nothing of the next step has run."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)
'''


def resume_args(config: Path, corpus: Path, cache: Path, kill_at: int) -> list[str]:
    """12 steps over 5-batch epochs, validation every 3 steps, dropout on, deterministic kernels."""
    return ["fit", *tiny(
        config, corpus, cache,
        "--data.init_args.samples_per_epoch", "40",
        "--model.init_args.config.dropout", "0.1",
        "--trainer.val_check_interval", "3",
        "--trainer.deterministic", "true",
        "--trainer.log_every_n_steps", "1",
        "--checkpoint.every_n_train_steps", str(kill_at),
        steps=12,
    )]


def weights_and_optimizer(ckpt: Path) -> dict[str, torch.Tensor]:
    data = torch.load(ckpt, map_location="cpu", weights_only=True)
    out = {f"model.{k}": v for k, v in data["state_dict"].items()}
    for i, state in data["optimizer_states"][0]["state"].items():
        out.update({f"optim.{i}.{k}": v for k, v in state.items() if torch.is_tensor(v)})
    out["global_step"] = torch.tensor(data["global_step"])
    return out


def test_sigkill_after_a_checkpoint_then_resume_last_is_bitwise_identical(corpus, cache, tmp_path):
    """BERT MLM with dropout: the global RNG (dropout) and the collator's (masking) both matter. The
    kill comes after step 5, the last batch of epoch 0, with a validation at step 3 before it: the
    resumed run starts a new epoch and must not draw anything the original did not. (Each of the
    three, the RNG restore, the collator restore and the loaders' own generators, was checked to make
    this fail when disabled.)"""
    kill_at = 5
    (tmp_path / "killer.py").write_text(KILLER)
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    run, ref = tmp_path / "run", tmp_path / "ref"
    run.mkdir(), ref.mkdir()
    args = resume_args(CONFIGS / "bert-mlm.yaml", corpus, cache, kill_at)

    killer = f'{{"class_path": "killer.KillAfterCheckpoint", "init_args": {{"step": {kill_at}}}}}'
    killed = launch([*args, f"--trainer.callbacks+={killer}"], run, env=env, wait=False)
    try:
        out, _ = killed.communicate(timeout=300)
    finally:
        reap(killed)
    assert killed.returncode == -signal.SIGKILL, out[-4000:]
    folder = run / "runs" / "llm" / "version_0"
    last = folder / "checkpoints" / "last.ckpt"
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == kill_at
    config_before = (folder / "config.yaml").read_bytes()
    rows_before = metric_rows(folder, "train/loss")
    assert [s for s, _ in rows_before] == list(range(kill_at))

    resumed = launch([*args, "--ckpt_path", "last"], run, env=env, wait=False)  # a fresh process resumes ...
    try:
        fit_here(args, ref)  # ... while the uninterrupted reference runs here
        out, _ = resumed.communicate(timeout=300)
    finally:
        reap(resumed)
    assert resumed.returncode == 0, out[-4000:]

    assert sorted(p.name for p in (run / "runs" / "llm").iterdir()) == ["version_0"], "resumed in its folder"
    expected = weights_and_optimizer(ref / "runs" / "llm" / "version_0" / "checkpoints" / "last.ckpt")
    got = weights_and_optimizer(last)
    assert expected["global_step"] == 12 and expected.keys() == got.keys()
    differ = [k for k in expected if not torch.equal(expected[k], got[k])]
    assert not differ, f"{len(differ)} of {len(expected)} tensors differ, e.g. {differ[:3]}"

    rows_after = metric_rows(folder, "train/loss")  # one metrics.csv: the killed run's rows, then the rest
    assert rows_after == rows_before + metric_rows(ref / "runs" / "llm" / "version_0", "train/loss")[kill_at:]
    assert (folder / "config.yaml").read_bytes() == config_before
    assert (folder / "config.resumed-1.yaml").is_file()


def test_ckpt_path_last_without_a_run_is_refused_naming_the_flag(corpus, cache, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code = main(["fit", *tiny(CONFIGS / "quickstart.yaml", corpus, cache, steps=2), "--ckpt_path", "last"])
    err = capsys.readouterr().err
    assert code == 2 and "--ckpt_path last" in err and "Traceback" not in err, err[-2000:]
    assert not list((tmp_path / "runs" / "llm").glob("version_*/checkpoints/*.ckpt"))


def test_random_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    state = collect_rng_state()
    first = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)], np.random.randn())
    torch.save({"rng": state}, tmp_path / "rng.pt")
    apply_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True)["rng"])
    again = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)], np.random.randn())
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1])
    assert first[2] == again[2] and first[3] == again[3]


class Draws(L.LightningModule):
    """Draws a random number per training step; its validation draws from every global RNG."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.draws: list[float] = []

    def training_step(self, batch, batch_idx):
        self.draws.append(torch.rand(1).item() + np.random.rand() + random.random())
        return (self.w * batch).sum()

    def validation_step(self, batch, batch_idx):
        torch.rand(10), np.random.rand(10), random.random()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def training_draws(validate: bool, callbacks: list) -> list[float]:
    L.seed_everything(7, verbose=False)
    model = Draws()
    data = DataLoader(torch.ones(8, 1), batch_size=1, generator=torch.Generator().manual_seed(0))
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, max_steps=8, callbacks=callbacks,
                        val_check_interval=2, num_sanity_val_steps=2, limit_val_batches=2 if validate else 0)
    trainer.fit(model, data, DataLoader(torch.ones(4, 1), batch_size=1, generator=torch.Generator()))
    return model.draws


def test_validation_never_shifts_the_training_random_stream():
    """With ExactResume a run that validates trains on the same random numbers as one that does not,
    so a resumed run that validates at other moments than the original still matches it."""
    plain = training_draws(validate=False, callbacks=[])
    assert training_draws(validate=True, callbacks=[]) != plain  # validation does draw: the test can fail
    assert training_draws(validate=True, callbacks=[ExactResume()]) == plain


# ---- atomic checkpoint writes -------------------------------------------------------------------------


def checkpoint(size: int) -> dict:
    return {"state_dict": {"w": torch.arange(size, dtype=torch.float32)}, "global_step": size}


def test_a_save_that_fails_midway_leaves_the_previous_checkpoint_untouched(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    target = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint(checkpoint(1000), target)
    before = target.read_bytes()
    assert sorted(p.name for p in target.parent.iterdir()) == ["last.ckpt"], "no temporary file is left"

    real_save = torch.save

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"\x00" * 4096)  # some bytes reach the temporary file, then the disk "fills up"
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="No space left"):
        io.save_checkpoint(checkpoint(5000), target)
    monkeypatch.setattr(torch, "save", real_save)

    assert target.read_bytes() == before
    assert torch.load(target, weights_only=True)["global_step"] == 1000
    assert sorted(p.name for p in target.parent.iterdir()) == ["last.ckpt"]
    io.save_checkpoint(checkpoint(7), target)  # and the next save works
    assert torch.load(target, weights_only=True)["global_step"] == 7


def write_slowly_then_hang(target: str, partial) -> None:
    """In a forked child: save a large checkpoint over ``target`` through a file object that stops
    after its first megabyte is on disk, says so, and waits to be killed."""
    import llm_modules.training.checkpoint_io as cio

    real_fdopen = os.fdopen

    class Slow:
        def __init__(self, f):
            self.f, self.n = f, 0

        def write(self, b):
            written, self.n = self.f.write(b), self.n + len(b)
            if self.n > 1 << 20:
                self.f.flush()
                partial.set()
                signal.pause()
            return written

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    cio.os.fdopen = lambda fd, mode: Slow(real_fdopen(fd, mode))  # this process only: it is a fork
    cio.atomic_torch_save({"w": torch.zeros(4 << 20)}, target)


def test_sigkill_during_a_save_keeps_the_previous_checkpoint_and_the_next_save_cleans_up(tmp_path):
    target = tmp_path / "last.ckpt"
    atomic_torch_save(checkpoint(1000), target)
    before = target.read_bytes()
    fork = multiprocessing.get_context("fork")
    partial = fork.Event()
    child = fork.Process(target=write_slowly_then_hang, args=(str(target), partial), daemon=True)
    child.start()
    try:
        assert partial.wait(60), "the child never wrote its first megabyte"
        temps = [p for p in tmp_path.iterdir() if p.name != "last.ckpt"]
        assert len(temps) == 1 and temps[0].stat().st_size > 1 << 20  # the partial write is on disk
        os.kill(child.pid, signal.SIGKILL)
        child.join(30)
    finally:
        if child.is_alive():
            child.kill()

    assert target.read_bytes() == before
    assert torch.load(target, weights_only=True)["global_step"] == 1000
    assert temps[0].exists(), "a killed save cannot clean up after itself"
    atomic_torch_save(checkpoint(3), target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"], "the next save removes the leftover"
    assert torch.load(target, weights_only=True)["global_step"] == 3


def test_the_cli_trainer_saves_through_the_atomic_io_unless_the_user_gives_one(tmp_path):
    import lightning as L
    from lightning.pytorch.plugins.io import TorchCheckpointIO

    from llm_modules.training.checkpoint_io import use_atomic_checkpoints

    plain = L.Trainer(accelerator="cpu", devices=1, logger=False, default_root_dir=tmp_path)
    assert use_atomic_checkpoints(plain) and isinstance(plain.strategy.checkpoint_io, AtomicCheckpointIO)
    mine = TorchCheckpointIO()
    custom = L.Trainer(accelerator="cpu", devices=1, logger=False, plugins=[mine], default_root_dir=tmp_path)
    assert not use_atomic_checkpoints(custom) and custom.strategy.checkpoint_io is mine
