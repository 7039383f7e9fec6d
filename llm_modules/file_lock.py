"""An exclusive, non-blocking lock on a file, held for as long as a process keeps it open.

Used wherever two ``llm-modules`` processes must not write the same place at once: a ``data prepare``
output directory, a training run folder. ``fcntl.flock`` on an open file: the kernel releases it
when the holder closes the file or dies (even by SIGKILL), so a crashed run never leaves a stale
lock that a person has to delete. The holder writes its pid into the file, so a refusal can say
which process holds it. The lock file itself is never removed: unlinking it while another process
waits on the old inode would let two processes each hold "the" lock.

A child made by ``fork`` (``multiprocessing``'s default on Linux: a manager process, a worker pool)
would share the lock with its parent, and outlive it for a moment when both are killed: a rerun
right after could find the lock still held. So a forked child drops its share at once
(``_drop_in_child``); the parent still holds the lock.

Where the platform has no ``fcntl`` (Windows) there is no lock; ``hold`` returns None and the user
keeps runs apart.
"""

from __future__ import annotations

import os
import weakref
from pathlib import Path

_HELD: weakref.WeakSet = weakref.WeakSet()  # the open files holding a lock in this process


def _drop_in_child() -> None:
    """In a forked child: point each locking descriptor at /dev/null, which drops the child's share
    of the lock (never ``LOCK_UN``: that would release the parent's too) and leaves the file object
    usable."""
    held = [h for h in _HELD if not h.closed]
    if not held:
        return
    null = os.open(os.devnull, os.O_RDWR)
    try:
        for handle in held:
            os.dup2(null, handle.fileno())
    finally:
        os.close(null)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_drop_in_child)


class LockHeld(Exception):
    """``path`` is locked by another open file; ``pid`` is the holder's process id when it wrote one."""

    def __init__(self, path: Path, pid: int | None):
        super().__init__(f"{path} is locked" + (f" by process {pid}" if pid else ""))
        self.path, self.pid = path, pid

    @property
    def by(self) -> str:
        """`` (process 1234)`` or nothing, to put into a one-line message."""
        return f" (process {self.pid})" if self.pid else ""


def hold(path: Path):
    """Lock ``path`` (created if missing; its folder must exist) and return the open file that holds the
    lock: close it to release. Raises LockHeld when another open file holds it; returns None without
    ``fcntl``."""
    try:
        import fcntl
    except ImportError:
        return None
    handle = open(path, "a+")  # noqa: SIM115 (held until the caller closes it)
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        text = handle.read().strip()
        handle.close()
        raise LockHeld(path, int(text) if text.isdigit() else None) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    _HELD.add(handle)
    return handle
