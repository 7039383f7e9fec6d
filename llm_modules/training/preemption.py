"""Preemption: SIGTERM or SIGINT during ``fit`` saves a resumable checkpoint, then the run exits 143 / 130.

Lightning's own handling does not do this for us: its SIGTERM handler flags ``trainer.received_sigterm``
at once, so the loops raise ``SIGTERMException`` wherever they next look (in the middle of a
validation pass too) and, with nothing saved, the exception (a ``SystemExit`` without a code) ends the
process with status 0; SIGINT raises ``KeyboardInterrupt`` in the middle of the step and Lightning exits 1.
A scheduler then sees success, or the work since the last periodic checkpoint is lost.

:class:`Preemption` keeps Lightning's design (the signal only asks; the loop stops the run by raising
``SIGTERMException``, which ``on_exception`` callbacks see as documented) and changes *when*:

1. While training, SIGTERM and SIGINT only record the signal (the handlers are installed once
   Lightning has installed its own, from the first sanity-check or training hook; Lightning's teardown
   puts back the handlers the process had before ``fit``).
2. At the end of the optimizer step in progress (``on_train_batch_end`` of a batch that stepped, the
   point where ``ModelCheckpoint`` saves every N steps and from which resume is exact), the processes
   agree whether any of them was signalled (one small all-reduce under DDP, so every rank stops at
   the same step: the save is collective), and if so the trainer writes the run's ``last.ckpt``
   (model, optimizer, schedule, loops, data position and, through ``ExactResume``, the random state).
3. The rest of that step still runs (its metrics are logged; a validation due at this step runs and
   is logged), and at the start of the next batch, before it trains, the run stops with
   :class:`Preempted`, a ``SIGTERMException`` whose exit code is 128 + the signal number (143, 130).
   ``llm_modules.cli.main`` prints one line saying where the checkpoint is and how to resume.

A signal that comes during a validation pass is acted on at the end of the next step. A run that
reaches its last step before it can stop simply finishes (exit 0): its work is complete and saved.

A second signal while the checkpoint is being written is ignored: the save finishes and the run
exits as for the first. (The file is written to a temporary name and renamed over ``last.ckpt`` only
when complete, so even SIGKILL during the save leaves the previous ``last.ckpt`` intact.)
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preempted(SIGTERMException):
    """The run stopped on a signal after saving ``path`` at ``step``; ``code`` is 128 + the signal number.

    ``report`` is the one line the command prints (empty on ranks other than 0, which print nothing).
    """

    def __init__(self, signum: int, step: int, path: Path, report: str):
        super().__init__(128 + signum)
        self.signum, self.step, self.path, self.report = signum, step, path, report


class Preemption(Callback):
    """Save ``last.ckpt`` at the end of the current optimizer step on SIGTERM/SIGINT, then stop (see module doc)."""

    def __init__(self):
        self.requested: int | None = None  # the first signal received (this process), or None
        self._stop: tuple[int, int, Path] | None = None  # (signal, step, checkpoint) once saved
        self._installed = False
        self._last_step = -1

    # ---- signals ---------------------------------------------------------------------------------------

    def _record(self, signum: int, frame: Any) -> None:
        # Only record: a handler runs between two bytecodes of whatever the main thread does (even a
        # write to stderr), so it must not print, log or touch the trainer.
        if self.requested is None:
            self.requested = signum

    def _install(self) -> None:
        """Replace the handlers Lightning installed (it restores the pre-``fit`` ones at teardown)."""
        if self._installed or threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        for signum in SIGNALS:
            signal.signal(signum, self._record)
        self._installed = True

    def on_fit_start(self, trainer, pl_module) -> None:
        """A new ``fit`` (a notebook may call it again): Lightning put the old handlers back at the last teardown."""
        self.requested, self._stop, self._installed, self._last_step = None, None, False, -1

    def on_sanity_check_start(self, trainer, pl_module) -> None:
        self._install()

    def on_train_start(self, trainer, pl_module) -> None:
        self._install()
        self._last_step = trainer.global_step

    # ---- the step boundary -----------------------------------------------------------------------------

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self._last_step or self._stop is not None:
            return  # accumulating gradients: no optimizer step ended here
        self._last_step = trainer.global_step
        signum = self._agreed_signal(trainer, self.requested or 0)
        if not signum:
            return
        path = last_checkpoint_path(trainer)
        trainer.save_checkpoint(path)  # every rank: the save is collective (ExactResume gathers RNG states)
        self._stop = (signum, trainer.global_step, path)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._stop is None:
            return
        signum, step, path = self._stop
        if signum == signal.SIGTERM:
            trainer._signal_connector.received_sigterm = True  # what Lightning would say: trainer.received_sigterm
        name = signal.Signals(signum).name
        report = (f"stopped by {name} at step {step}; saved {_shown(path)}; resume with --ckpt_path last"
                  if trainer.is_global_zero else "")
        raise Preempted(signum, step, path, report)

    @staticmethod
    def _agreed_signal(trainer, mine: int) -> int:
        """``mine``, or under DDP the largest signal number any process got (every rank gets the same answer)."""
        if trainer.world_size > 1 and dist.is_available() and dist.is_initialized():
            flag = torch.tensor([mine], dtype=torch.int32, device=trainer.strategy.root_device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            return int(flag.item())
        return mine


def last_checkpoint_path(trainer) -> Path:
    """Where this run's ``last.ckpt`` is: the folder of its ``ModelCheckpoint`` that keeps a last
    checkpoint (the run's ``checkpoints/`` folder), else ``<default_root_dir>/checkpoints``."""
    keepers = [cb for cb in trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint) and cb.dirpath]
    keepers.sort(key=lambda cb: not cb.save_last)
    if keepers:
        cb = keepers[0]
        step, epoch = torch.tensor(trainer.global_step), torch.tensor(trainer.current_epoch)
        return Path(cb.format_checkpoint_name({"step": step, "epoch": epoch}, cb.CHECKPOINT_NAME_LAST))
    return Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt"


def _shown(path: Path) -> str:
    """``path`` relative to the working folder when it is inside it (as the user typed the run folder)."""
    try:
        return os.path.relpath(path) if Path(path).resolve().is_relative_to(Path.cwd().resolve()) else str(path)
    except (OSError, ValueError):
        return str(path)
