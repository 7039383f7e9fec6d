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

The temporary name carries the writer's host and pid (``.last.ckpt.HOST-PID-RANDOM.tmp``) and the
writer holds an exclusive ``flock`` on it until it is renamed: a save removes the leftovers of a
killed save of the same target, but only those whose writer is gone (same host, pid not running,
lock free), never the file another run is writing into the same folder at that moment.

Every checkpoint written here carries an integrity record (``llm_modules.training.integrity``), and
:class:`AtomicCheckpointIO` reads checkpoints with ``weights_only=True`` and verifies them, so
resume (``fit --ckpt_path``), ``validate/test/predict --ckpt_path`` and rollbacks refuse a damaged
or code-carrying file in one line.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import logging
import os
import re
import secrets
import socket
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy

from llm_modules.training import integrity

try:  # POSIX; on Windows an open file cannot be deleted anyway
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

log = logging.getLogger(__name__)

TEMP_SUFFIX = ".tmp"


def temp_prefix(target: Path) -> str:
    """The prefix of the temporary files a save of ``target`` writes (``.last.ckpt.`` for last.ckpt)."""
    return f".{target.name}."


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname()) or "host"


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj, path)`` that leaves ``path`` untouched unless the whole new file is on disk.
    A dict (a checkpoint) gets its integrity record first."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(target)
    if isinstance(obj, dict):
        integrity.stamp(obj)
    # os.open with mode 0o666 (not mkstemp's 0o600): the file gets the permissions the umask gives any new file
    tmp = target.parent / f"{temp_prefix(target)}{_host()}-{os.getpid()}-{secrets.token_hex(4)}{TEMP_SUFFIX}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            if fcntl is not None:  # held until the rename: a concurrent cleanup sees the file in use
                fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
            if fcntl is not None:
                os.replace(tmp, target)
        if fcntl is None:
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

    def load_checkpoint(self, path, map_location: Any | None = None, weights_only: bool | None = None) -> dict[str, Any]:
        """Read with ``weights_only=True`` whatever the caller asks (nothing is ever unpickled) and
        verify the integrity record; a bad file is one ConfigError line naming it. Tensors come onto
        the CPU unless ``map_location`` says otherwise (where they are hashed; Lightning moves the
        states onto the model's device as it restores them)."""
        if "://" in str(path) and not str(path).startswith("file://"):
            return super().load_checkpoint(path, map_location=map_location, weights_only=True)
        local = str(path).removeprefix("file://")
        if os.path.isdir(local):  # a sharded checkpoint folder: its strategy's own reader
            return super().load_checkpoint(path, map_location=map_location, weights_only=True)
        return integrity.load_verified(local, map_location=map_location if map_location is not None else "cpu")


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
    """Temporary files that a killed save of the same target left behind (they can be checkpoint-sized);
    those of a writer still at work (another run saving into the same folder) are left alone."""
    pattern = os.path.join(glob.escape(str(target.parent)), glob.escape(temp_prefix(target)) + "*" + TEMP_SUFFIX)
    for stale in glob.glob(pattern):
        if _writer_gone(stale):
            with contextlib.suppress(OSError):
                os.unlink(stale)
                log.info("removed %s, left by an interrupted checkpoint save", stale)


def _writer_gone(temp: str) -> bool:
    """Whether the process that wrote ``temp`` has ended: its name says this host and a pid that is
    not running (or none: older names), and its lock can be taken."""
    found = re.search(r"\.([A-Za-z0-9_]+)-(\d+)-[0-9a-f]+" + re.escape(TEMP_SUFFIX) + "$", temp)
    if found:
        host, pid = found.group(1), int(found.group(2))
        if host != _host() or _pid_alive(pid):
            return False
    if fcntl is None:
        return True
    try:
        fd = os.open(temp, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, owned by someone else
        return True
    return True


def _fsync_dir(folder: Path) -> None:
    if os.name == "nt":  # folders cannot be opened for fsync on Windows; the rename is durable there
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
