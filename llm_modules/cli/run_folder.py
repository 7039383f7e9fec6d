"""Run folders: each run gets its own folder, claimed atomically and locked while the run writes it.

Where things go (the default TensorBoard + CSV loggers, save_dir ``runs``, name ``llm``):

- ``fit`` writes ``runs/llm/version_N/`` (metrics.csv, event files, config.yaml, checkpoints/).
  ``N`` is claimed with an exclusive ``mkdir``: two runs started together into one folder take
  ``version_N`` and ``version_{N+1}``, never the same one (Lightning's loggers only list the folder and
  take max + 1, so both took the same N and wrote into each other's files).
- ``validate``/``test``/``predict`` write ``runs/llm/eval/version_N/`` (their metrics and config.yaml),
  so evaluation output never looks like a training run and ``--ckpt_path last`` (which looks at
  ``runs/llm/version_N``) never picks it up. Lightning prints their results too.
- ``--trainer.default_root_dir DIR`` moves all of it under ``DIR`` (``DIR/llm/version_N``) unless a
  logger's ``save_dir`` is given: Lightning's convention, where the default logger writes under
  ``default_root_dir``. ``--ckpt_path last`` looks there too.
- While ``fit`` writes a run folder it holds an flock on ``.run.lock`` in it
  (``llm_modules.file_lock``, the code ``data prepare`` uses), so a second ``fit`` that would continue
  the same folder (``--ckpt_path last`` while the first still runs) is refused with one line naming
  the holder's pid. The kernel drops the lock when the holder exits or is killed.
- A run that fails before its first optimizer step removes the folder it claimed, when the folder holds
  nothing but what the start wrote (config, hparams, event files, metrics without a training row, the
  lock); the parents it created for it go too when empty. Nothing that existed before the run is
  touched, and a folder that a run continues is never removed.

Under DDP only global rank 0 claims and locks: the decision is made right after the strategy has set up
the processes (the first moment a rank knows it is rank 0 on every launcher, multi-node included) and
broadcast, so every rank's loggers name the same folder. Nothing reads a logger's version before then.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import re
from pathlib import Path

from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.trainer.states import TrainerFn

from llm_modules.cli.resume_last import ContinuingCSVWriter
from llm_modules.file_lock import LockHeld, hold
from llm_modules.registry import ConfigError

log = logging.getLogger(__name__)

DEFAULT_SAVE_DIR, DEFAULT_NAME = "runs", "llm"
DEFAULT_LOGGERS = ("lightning.pytorch.loggers.CSVLogger", "lightning.pytorch.loggers.TensorBoardLogger")
LOCK = ".run.lock"
EVAL = "eval"
# What the start of a run writes into its folder, before any step: removed with it when the run fails.
START_FILES = ("config.yaml", "config.resumed-*.yaml", "hparams.yaml", "events.out.tfevents.*", "metrics.csv", LOCK)


def claim_version(parent: Path) -> int:
    """Create ``parent/version_N`` for the next free N (one past the highest) with an exclusive mkdir,
    trying N + 1, N + 2, ... while another process gets there first; return N."""
    parent.mkdir(parents=True, exist_ok=True)
    taken = [int(m.group(1)) for p in parent.iterdir() if (m := re.fullmatch(r"version_(\d+)", p.name))]
    number = max(taken, default=-1) + 1
    while True:
        try:
            os.mkdir(parent / f"version_{number}")
            return number
        except FileExistsError:
            number += 1


def lock_run_folder(folder: Path):
    """Hold ``folder/.run.lock`` for as long as the returned file is open; ConfigError when another run
    holds it."""
    folder.mkdir(parents=True, exist_ok=True)
    try:
        return hold(folder / LOCK)
    except LockHeld as held:
        raise ConfigError(f"the run folder {folder} is in use by another run{held.by}; wait for it to finish "
                          "(or stop it) before continuing it, or start a new run without --ckpt_path") from None


def remove_unused(folder: Path) -> bool:
    """Remove ``folder`` if it holds only START_FILES at its top (metrics.csv with no training row) and
    empty sub-folders; True when removed. Anything else in it keeps the whole folder."""
    files, dirs = [], []
    for path in folder.rglob("*"):
        if path.is_dir() and not path.is_symlink():
            dirs.append(path)
        elif path.parent == folder and any(fnmatch.fnmatch(path.name, p) for p in START_FILES):
            if path.name == "metrics.csv" and _has_training_rows(path):
                return False
            files.append(path)
        else:
            return False
    for path in files:
        path.unlink()
    for path in sorted(dirs, key=lambda p: len(p.parts), reverse=True):
        path.rmdir()
    folder.rmdir()
    return True


def _has_training_rows(path: Path) -> bool:
    import csv

    with open(path, newline="") as f:
        return any(any(v for k, v in row.items() if k and k.startswith("train/")) for row in csv.DictReader(f))


def logs_under_default_root_dir(trainer_config) -> None:
    """``--trainer.default_root_dir DIR``: the default loggers write under DIR instead of ./runs, as
    Lightning's own default logger does; a ``save_dir`` the user gave stays."""
    root = trainer_config.get("default_root_dir")
    loggers = trainer_config.get("logger")
    if root is None or not loggers:
        return
    for entry in loggers if isinstance(loggers, list) else [loggers]:
        init = entry.get("init_args") if hasattr(entry, "get") else None
        if entry.get("class_path") in DEFAULT_LOGGERS and init is not None and init.get("save_dir") == DEFAULT_SAVE_DIR:
            init["save_dir"] = os.fspath(root)


class RunFolder(Callback):
    """Claims (or locks) the run folder of one trainer and shares it with all its loggers; on failure
    before the first step, removes what it claimed. ``attach`` installs it."""

    def __init__(self, trainer) -> None:
        self.trainer = trainer
        self.folder: Path | None = None  # on global rank 0: the folder this run writes
        self.claimed = False  # the folder was made by this run (so it may remove it)
        self.created: list[Path] = []  # folders made for it, innermost first, including the run folder
        self._lock = None
        self._setup_environment = trainer.strategy.setup_environment

    @classmethod
    def attach(cls, trainer) -> RunFolder:
        folder = cls(trainer)
        trainer.strategy.setup_environment = folder._after_setup_environment
        trainer.callbacks.append(folder)
        return folder

    def _loggers(self) -> list:
        """The loggers that share the first logger's ``save_dir/name`` and pick versioned folders."""
        loggers = self.trainer.loggers
        if not loggers or not isinstance(loggers[0], (CSVLogger, TensorBoardLogger)):
            return []
        root = loggers[0].root_dir
        return [lg for lg in loggers if isinstance(lg, (CSVLogger, TensorBoardLogger)) and lg.root_dir == root]

    def _after_setup_environment(self) -> None:
        self._setup_environment()  # the processes exist and know their ranks from here on
        loggers = self._loggers()
        if not loggers or "://" in str(loggers[0].root_dir):
            return  # no versioned logger, or a remote store: Lightning's own versioning
        answer = None
        if self.trainer.is_global_zero:
            try:
                answer = (self._choose(loggers), None)
            except ConfigError as err:
                answer = (None, str(err))
        version, error = self.trainer.strategy.broadcast(answer)
        if error:
            raise ConfigError(error)
        for logger in loggers:
            if logger._version is None:
                logger._version = version

    def _choose(self, loggers: list) -> int | str:
        """On global rank 0: the version every logger will use, its folder claimed or locked."""
        self.release()  # a second fit/validate on the same trainer takes its folder again
        root = Path(loggers[0].root_dir)
        training = self.trainer.state.fn == TrainerFn.FITTING
        given = next((lg._version for lg in loggers if lg._version is not None), None)
        if given is not None:  # continued by --ckpt_path last, or named by the user
            version = given
            self.folder = root / (given if isinstance(given, str) else f"version_{given}")
        else:
            parent = root if training else root / EVAL
            missing = [p for p in (parent, *parent.parents) if not p.exists()]
            number = claim_version(parent)
            version = number if training else f"{EVAL}/version_{number}"
            self.folder = parent / f"version_{number}"
            self.claimed, self.created = True, [self.folder, *missing]
        if training:
            fresh = not self.folder.exists() or not any(self.folder.iterdir())
            self._lock = lock_run_folder(self.folder)
            if fresh:  # Lightning's CSV writer would take the lock file for old logs and warn
                for logger in loggers:
                    if isinstance(logger, CSVLogger) and logger._experiment is None:
                        logger._experiment = ContinuingCSVWriter(str(self.folder))
        return version

    def on_train_start(self, trainer, pl_module) -> None:
        """A continued metrics.csv loses the rows the interrupted run logged after its checkpoint."""
        if trainer.is_global_zero and trainer.ckpt_path:
            step = trainer.global_step  # the resumed run's first rows are logged at this step
            for logger in trainer.loggers:
                writer = getattr(logger, "_experiment", None)
                if isinstance(writer, ContinuingCSVWriter):
                    writer.drop_rows_from(step)

    def discard_if_unused(self) -> bool:
        """After a failure: remove the claimed folder if the run never stepped and it holds only what
        the start wrote, and the parents made for it if empty. True when removed."""
        self.release()
        if not self.claimed or self.folder is None or self.trainer.global_step > 0:
            return False
        if not self.folder.is_dir() or not remove_unused(self.folder):
            return False
        for parent in self.created[1:]:
            try:
                parent.rmdir()
            except OSError:
                break  # not empty (another run's) or gone: leave it
        log.debug("removed %s: the run failed before its first step", self.folder)
        return True

    def release(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None
