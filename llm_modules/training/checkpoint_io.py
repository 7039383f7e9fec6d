"""Checkpoint files that are either the old one or the complete new one, never half of each.

Lightning's ``TorchCheckpointIO`` saves through ``_atomic_save``: the checkpoint is serialized into
memory, written inside an fsspec transaction to a file from ``tempfile.mkstemp()`` (the system temp
folder) and moved over the target on commit. When the temp folder is on another filesystem than the
run (``/tmp`` as tmpfs, a network or scratch volume) that move is a copy *into the target path*, so a
kill during it truncates the previous checkpoint; nothing is fsynced, so a power loss can leave a
renamed but empty file; and the whole checkpoint sits in memory (and in ``/tmp``) once more.

:class:`AtomicCheckpointIO` writes straight to a temporary file next to the target (same folder,
hence same filesystem), fsyncs it, ``os.replace``-s it over the target (atomic on POSIX and Windows)
and fsyncs the folder so the rename itself survives a crash. The temporary name starts with a dot and
does not start with ``last``, so Lightning's search for ``last*.ckpt`` never mistakes a leftover for a
checkpoint. Remote paths (``s3://``...) keep Lightning's own saver.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import logging
import os
import secrets
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy

log = logging.getLogger(__name__)

TEMP_SUFFIX = ".tmp"


def temp_prefix(target: Path) -> str:
    """The prefix of the temporary files a save of ``target`` writes (``.last.ckpt.`` for last.ckpt)."""
    return f".{target.name}."


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj, path)`` that leaves ``path`` untouched unless the whole new file is on disk."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(target)
    # os.open with mode 0o666 (not mkstemp's 0o600): the file gets the permissions the umask gives any new file
    tmp = target.parent / f"{temp_prefix(target)}{secrets.token_hex(8)}{TEMP_SUFFIX}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException as err:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        full = _disk_full(err)
        if full is not None:  # torch's writer reports it as "unexpected pos ..." or a bare OSError: say it plainly
            raise OSError(full, f"{os.strerror(full)}; the file was not replaced (a previous one of that name is "
                                "intact): free some space and run again", str(target)) from err
        raise
    _fsync_dir(target.parent)
    return target


def _disk_full(err: BaseException) -> int | None:
    """ENOSPC or EDQUOT when ``err`` or an exception it arose from is that error, else None."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
            return err.errno
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local saves are atomic and durable (see the module docstring)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(
                "AtomicCheckpointIO.save_checkpoint does not take storage_options (as TorchCheckpointIO); "
                "give a custom CheckpointIO plugin to use them"
            )
        if "://" in str(path) and not str(path).startswith("file://"):
            super().save_checkpoint(checkpoint, path)  # object stores: fsspec's transaction is their atomicity
            return
        atomic_torch_save(checkpoint, str(path).removeprefix("file://"))


def use_atomic_checkpoints(trainer) -> bool:
    """Give ``trainer``'s strategy an :class:`AtomicCheckpointIO` where that changes nothing else.

    Only the strategies that save through the plain ``TorchCheckpointIO`` (one device, DDP in its
    forms) and only when no CheckpointIO was given by the user (``trainer.plugins``): FSDP, DeepSpeed,
    ModelParallel and XLA write their own (sharded) files their own way. Returns whether it was set.
    """
    strategy = trainer.strategy
    if type(strategy) not in (SingleDeviceStrategy, DDPStrategy) or strategy._checkpoint_io is not None:
        return False
    strategy.checkpoint_io = AtomicCheckpointIO()
    return True


def _remove_stale_temps(target: Path) -> None:
    """Temporary files that a killed save of the same target left behind (they can be checkpoint-sized)."""
    pattern = os.path.join(glob.escape(str(target.parent)), glob.escape(temp_prefix(target)) + "*" + TEMP_SUFFIX)
    for stale in glob.glob(pattern):
        with contextlib.suppress(OSError):
            os.unlink(stale)
            log.info("removed %s, left by an interrupted checkpoint save", stale)


def _fsync_dir(folder: Path) -> None:
    if os.name == "nt":  # folders cannot be opened for fsync on Windows; the rename is durable there
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
