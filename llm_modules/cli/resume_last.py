"""``--ckpt_path last``: resume the newest run, in its own run folder.

Lightning reads ``ckpt_path="last"`` as "the last checkpoint in the checkpoint callback's folder";
with versioned run folders a new ``fit`` gets a fresh, empty ``version_{N+1}/checkpoints``, so
Lightning finds nothing, warns, and silently trains from scratch. Here ``last`` means what a user
means: ``runs/llm/version_N/checkpoints/last.ckpt`` of the highest N that has one.

``fit`` then keeps writing into ``version_N`` rather than opening a new folder: one run, one folder
(metrics.csv continues, TensorBoard adds an event file next to the first, and the checkpoint callback
finds its own folder again, so it keeps managing the best-k files it wrote before the interruption;
resumed twice, ``last`` finds the same folder again). Lightning's CSV writer deletes a metrics.csv it
finds in its folder; the writer below appends instead. The resumed run's config is saved next to the
original as ``config.resumed-K.yaml`` rather than over it. ``validate``/``test``/``predict`` with
``last`` read the same checkpoint and log under ``runs/llm/eval/`` (``run_folder``); without a
``--config`` the checkpoint is found before parsing (``newest_run_checkpoint``), so that the data can
be completed from it.

When there is nothing to resume this is a ConfigError naming ``--ckpt_path``, not a fresh start.

``last.ckpt`` is read and verified first (``weights_only=True``, its integrity record): when it is
damaged or truncated, the newest other checkpoint in the same folder that verifies (highest step,
then newest file) is resumed instead, said in one log line; when none does, a ConfigError names
``last.ckpt`` and why.
"""

from __future__ import annotations

import csv
import logging
import os
import re
from pathlib import Path

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from llm_modules.atomic_files import replacing
from llm_modules.registry import ConfigError
from llm_modules.integrity import CheckpointCorrupt, load_verified

log = logging.getLogger(__name__)

LAST = "last.ckpt"


def resolve_last(trainer, subcommand: str) -> Path:
    """The checkpoint ``--ckpt_path last`` names for ``trainer``; for ``fit``, also point the loggers at
    its run folder. Raises ConfigError when there is none."""
    explicit = [cb.dirpath for cb in trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint) and cb.dirpath]
    if explicit:  # a checkpoint folder fixed by the user: Lightning's meaning of "last" is already right
        return _existing(Path(explicit[0]) / LAST, f"the checkpoint folder {explicit[0]}")
    if not trainer.loggers:
        return _existing(Path(trainer.default_root_dir) / "checkpoints" / LAST,
                         f"{trainer.default_root_dir}/checkpoints")
    first = trainer.loggers[0]
    root = Path(first.save_dir or trainer.default_root_dir) / str(first.name)
    if getattr(first, "_version", None) is not None:  # a version given by the user: that folder
        version = first.version if isinstance(first.version, str) else f"version_{first.version}"
        return _existing(root / version / "checkpoints" / LAST, str(root / version / "checkpoints"))
    number, found = newest_run_checkpoint(root)
    if subcommand == "fit":
        continue_in(trainer, root, number)
    return found


def newest_run_checkpoint(root: Path) -> tuple[int, Path]:
    """(N, checkpoint) of the highest ``root/version_N`` that has ``checkpoints/last.ckpt``: that file
    when it verifies, else the newest intact checkpoint beside it. Raises ConfigError when there is none."""
    runs = sorted(((int(m.group(1)), p) for p in (root.iterdir() if root.is_dir() else [])
                   if (m := re.fullmatch(r"version_(\d+)", p.name)) and (p / "checkpoints" / LAST).is_file()),
                  key=lambda item: item[0])
    if not runs:
        raise ConfigError(f"--ckpt_path last: no run under {root} has checkpoints/{LAST} to resume; start "
                          "without --ckpt_path, or give the path of a .ckpt file")
    number, folder = runs[-1]
    return number, _existing(folder / "checkpoints" / LAST, str(folder / "checkpoints"))


def continue_in(trainer, root: Path, number: int) -> None:
    """Make every auto-versioned logger under ``root`` write into ``version_{number}`` again."""
    for logger in trainer.loggers:
        same_root = Path(logger.save_dir or trainer.default_root_dir) / str(logger.name) == root
        if same_root and getattr(logger, "_version", None) is None:
            logger._version = number
            if isinstance(logger, CSVLogger) and trainer.is_global_zero:
                logger._experiment = ContinuingCSVWriter(logger.log_dir)
    folder = root / f"version_{number}"
    for callback in trainer.callbacks:
        if isinstance(callback, SaveConfigCallback):
            k = 1
            while (folder / f"config.resumed-{k}.yaml").exists():
                k += 1
            callback.config_filename = f"config.resumed-{k}.yaml"


class ContinuingCSVWriter(ExperimentWriter):
    """Lightning's CSV writer, but it appends to the metrics.csv it finds instead of deleting it, and
    rewrites the file (when new columns appear, or when rows are dropped) through a temporary file
    and a rename, so a kill keeps the old one. In a new folder it is the plain writer, except that it
    does not take the run folder's lock file for old logs (``run_folder``)."""

    def __init__(self, log_dir: str) -> None:
        super().__init__(log_dir)
        if os.path.isfile(self.metrics_file_path):
            with open(self.metrics_file_path, newline="") as f:
                self.metrics_keys = list(next(csv.reader(f), []))

    def _check_log_dir_exists(self) -> None:
        """Nothing to refuse or delete: the folder is the run being resumed."""

    def drop_rows_from(self, step: int) -> int:
        """Drop the rows on file whose ``step`` is ``step`` or more, train and validation rows alike;
        return how many. Called when the run resumes from a checkpoint taken after ``step`` optimizer
        steps: a row's ``step`` is the number of optimizer steps done before it was logged (step k's
        train row and the validation after step k both say k - 1), so these rows were logged after the
        checkpoint by the interrupted run, and the resumed run logs them again. What remains reads as
        one run."""
        if not os.path.isfile(self.metrics_file_path):
            return 0
        with open(self.metrics_file_path, newline="") as f:
            reader = csv.DictReader(f)
            fieldnames = list(reader.fieldnames or self.metrics_keys)
            rows = list(reader)
        kept = [row for row in rows if not _step_at_least(row.get("step"), step)]
        if len(kept) < len(rows):
            self._write_atomically(fieldnames, kept)
        return len(rows) - len(kept)

    def _rewrite_with_new_header(self, fieldnames: list[str]) -> None:
        with open(self.metrics_file_path, newline="") as f:
            rows = list(csv.DictReader(f))
        self._write_atomically(fieldnames, rows)

    def _write_atomically(self, fieldnames: list[str], rows: list[dict]) -> None:
        with replacing(self.metrics_file_path) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fieldnames)
            writer.writeheader()
            writer.writerows(rows)


def _step_at_least(value: str | None, step: int) -> bool:
    try:
        return int(float(value)) >= step
    except (TypeError, ValueError):
        return False  # no step: keep the row


def _existing(path: Path, where: str) -> Path:
    """``path`` (a last.ckpt) when it verifies, else the newest intact checkpoint beside it."""
    if not path.is_file():
        raise ConfigError(f"--ckpt_path last: there is no {LAST} in {where} to resume; start without "
                          "--ckpt_path, or give the path of a .ckpt file")
    try:
        load_verified(path, mmap=True)
        return path
    except CheckpointCorrupt as err:
        problem = err.problem
    for candidate in _by_step(path):
        try:
            load_verified(candidate, mmap=True)
        except CheckpointCorrupt as err:
            log.warning("%s is corrupt too (%s); not resumed", candidate.name, err.problem)
            continue
        log.warning("%s is corrupt (%s); resuming from %s", path.name, problem, candidate.name)
        return candidate
    raise ConfigError(f"--ckpt_path last: {path} is corrupt ({problem}) and no other checkpoint in {path.parent} "
                      "verifies; start without --ckpt_path, or give the path of an intact .ckpt file")


def _by_step(last: Path) -> list[Path]:
    """The other checkpoints in ``last``'s folder, newest first: by the step they hold, then mtime."""
    found = []
    for candidate in last.parent.glob("*.ckpt"):
        if candidate == last or candidate.name.startswith(".") or not candidate.is_file():
            continue
        try:
            meta = load_verified(candidate, mmap=True, check=False)
        except CheckpointCorrupt:
            continue
        step = meta.get("global_step") if isinstance(meta, dict) else None
        found.append((step if isinstance(step, int) else -1, candidate.stat().st_mtime, candidate))
    return [candidate for *_, candidate in sorted(found, reverse=True)]
