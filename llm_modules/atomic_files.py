"""Files written whole or not at all, with the permissions any new file gets.

Every file the project writes for others to read (exported weights, tokenizers, configs, adapters,
generations, reports) is written to a temporary file in the target's own folder (so the final
``os.replace`` stays on one filesystem and is atomic), flushed to disk, then renamed over the target.
A failed or killed write leaves the old file as it was, or no file, never half of one.

The temporary file is created with ``os.open(..., 0o666)``: the umask then decides its mode exactly as
for a plain ``open()`` (0644 under the usual 022). ``tempfile.mkstemp`` would give 0600, which the
rename keeps: an exported model or tokenizer nobody else on the machine can read. Writers that make
their own temporary file and rename it over the name they are given (safetensors >= 0.6 does, with
0600) get that mode put back before the file moves into place.

The temporary name carries the writer's host and pid (``.NAME.HOST-PID-RANDOM.tmp``) and the writer
holds an exclusive ``flock`` on it until the rename. A write first removes the leftovers of a killed
write of the same target, but only those whose writer is gone (same host, pid not running, lock
free), never the file another process is writing at that moment. After the rename the folder is
synced too, so the rename itself survives a crash, and a full disk is said plainly with the path.
Checkpoints (``llm_modules.training.checkpoint_io.atomic_torch_save``) are written through
:func:`writing` like every other file.
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
import stat
from collections.abc import Iterator
from pathlib import Path

try:  # POSIX; on Windows an open file cannot be deleted anyway
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

log = logging.getLogger(__name__)

TEMP_SUFFIX = ".tmp"


def temp_prefix(target: Path) -> str:
    """The prefix of the temporary files a write of ``target`` makes (``.last.ckpt.`` for last.ckpt)."""
    return f".{target.name}."


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname()) or "host"


@contextlib.contextmanager
def writing(path: str | os.PathLike) -> Iterator[tuple[int, Path]]:
    """Yield ``(fd, tmp)``: a new, locked temporary file next to ``path`` (mode 0666 less the umask)
    and its open descriptor, for the body to fill (through the descriptor or by name). When the body
    completes the file is synced, given back the mode a writer may have changed, renamed over ``path``
    and the folder synced; when it raises the file is removed and ``path`` is left as it was."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(target)
    tmp = target.parent / f"{temp_prefix(target)}{_host()}-{os.getpid()}-{secrets.token_hex(4)}{TEMP_SUFFIX}"
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        if fcntl is not None:  # held until the rename: a concurrent cleanup sees the file in use
            fcntl.flock(fd, fcntl.LOCK_EX)
        mode = plain_mode(tmp)
        yield fd, tmp
        restore_mode(tmp, mode)
        fsync_file(tmp)  # by name: a writer may have replaced the file (safetensors renames its own over it)
        os.replace(tmp, target)
    except BaseException as err:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        full = _disk_full(err)
        if full is not None:  # torch's writer reports it as "unexpected pos ..." or a bare OSError: say it plainly
            raise OSError(full, f"{os.strerror(full)}; the file was not replaced (a previous one of that name is "
                                "intact): free some space and run again", str(target)) from err
        raise
    finally:
        os.close(fd)
    _fsync_dir(target.parent)


@contextlib.contextmanager
def replacing(path: str | os.PathLike) -> Iterator[Path]:
    """:func:`writing` for writers that take a file name (safetensors, sentencepiece, ``open``): yield
    the temporary path to fill."""
    with writing(path) as (_, tmp):
        yield tmp


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see the module docstring)."""
    with replacing(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` as UTF-8 to ``path`` atomically."""
    return write_bytes(path, text.encode("utf-8"))


def plain_mode(path: str | os.PathLike) -> int:
    """The permission bits of ``path``; of a file just made by ``open()``, those any new file gets here."""
    return stat.S_IMODE(os.stat(path).st_mode)


def restore_mode(path: str | os.PathLike, mode: int) -> None:
    """Give ``path`` the permission bits ``mode`` if a writer changed them (see the module docstring)."""
    if plain_mode(path) != mode:
        os.chmod(path, mode)


def fsync_file(path: str | os.PathLike) -> None:
    """Flush ``path``'s data to disk, so a rename that follows never publishes an empty file."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _disk_full(err: BaseException) -> int | None:
    """ENOSPC or EDQUOT when ``err`` or an exception it arose from is that error, else None."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
            return err.errno
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def _remove_stale_temps(target: Path) -> None:
    """Temporary files that a killed write of the same target left behind (they can be checkpoint-sized);
    those of a writer still at work (another run writing into the same folder) are left alone."""
    pattern = os.path.join(glob.escape(str(target.parent)), glob.escape(temp_prefix(target)) + "*" + TEMP_SUFFIX)
    for stale in glob.glob(pattern):
        if _writer_gone(stale):
            with contextlib.suppress(OSError):
                os.unlink(stale)
                log.info("removed %s, left by an interrupted write", stale)


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
