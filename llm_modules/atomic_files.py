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
(``llm_modules.training.checkpoint_io.atomic_torch_save`` does the same for ``torch.save``.)
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path

TEMP_SUFFIX = ".tmp"


def create_temp(target: Path) -> Path:
    """A new, empty file next to ``target`` (``.NAME.<random>.tmp``), mode 0666 less the umask."""
    tmp = target.parent / f".{target.name}.{secrets.token_hex(6)}{TEMP_SUFFIX}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    os.close(fd)
    return tmp


@contextlib.contextmanager
def replacing(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary file next to ``path`` for the body to fill; when the body completes it is
    synced and renamed over ``path``, when it raises it is removed and ``path`` is left as it was.
    Writers that take a file name (safetensors, sentencepiece) write into the yielded path."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = create_temp(target)
    try:
        mode = plain_mode(tmp)
        yield tmp
        restore_mode(tmp, mode)
        fsync_file(tmp)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


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
