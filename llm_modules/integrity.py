"""Checkpoints that say when their tensor data was damaged, and are read without running code.

``torch.load`` does not check the CRCs of the zip it reads, so a byte flipped on disk, in a copy or
in a transfer inside a tensor's data loads silently as a slightly different weight. Every checkpoint
this library writes (``atomic_torch_save``: Trainer checkpoints through ``AtomicCheckpointIO``,
``llm_modules.checkpoint.save_checkpoint``, ``llm-modules quantize``) therefore carries

    checkpoint["integrity"] = {"algorithm": "sha256", "digest": HEX, "tensors": N, "bytes": B}

a digest over every tensor (and byte string, such as the embedded tokenizer) reachable from the
checkpoint dict, in a fixed order: each one's key path, dtype, shape and raw bytes (the bytes as 8 MiB chunks hashed
in parallel, a tree hash). Adapter files (safetensors) carry the same record as JSON in their
metadata. :func:`verify` recomputes it on every read and refuses a mismatch naming the file.
sha256 runs at about 1.5 GB/s per core with the SHA extensions of current x86 and ARM CPUs; on
several cores hashing stays well under what serializing and fsyncing the same bytes costs.

Files without the record (written before it existed, or by other tools) still load: they are
*unverified*, not refused. Sharded checkpoint folders (FSDP, DeepSpeed, ModelParallel: each rank
writes its own files through its strategy) are not stamped or verified.

:func:`load_verified` is the one way this library reads a checkpoint file: ``weights_only=True``
(nothing is ever unpickled), one-line errors that never repeat torch's advice to unpickle, then
:func:`verify`.
"""

from __future__ import annotations

import errno
import hashlib
import math
import os
import pickle
import re
import warnings
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from llm_modules.atomic_files import writing
from llm_modules.registry import ConfigError

KEY = "integrity"
ALGORITHM = "sha256"
CHUNK = 8 << 20  # bytes per hashed piece of a tensor
_ALGORITHMS = frozenset({"sha256", "sha512", "blake2b", "blake2s", "sha3_256"})  # fixed-length digests


class CheckpointCorrupt(ConfigError):
    """A checkpoint whose tensor data does not match the checksum written with it; ``problem`` is
    the short reason, without the file name."""

    def __init__(self, message: str, problem: str = "tensor data does not match its checksum") -> None:
        super().__init__(message)
        self.problem = problem


class CheckpointUnreadable(CheckpointCorrupt):
    """A file that is not a checkpoint of plain data and tensors (truncated, foreign, or holding code)."""


def _payload(value: Any, path: str) -> Iterator[tuple[str, Any]]:
    """``(key path, tensor or bytes)`` of everything hashed, depth first, dict keys in sorted order."""
    if isinstance(value, torch.Tensor):
        yield path, value
    elif isinstance(value, (bytes, bytearray)):
        yield path, value
    elif isinstance(value, dict):
        for key in sorted(value, key=repr):
            if not (path == "" and key == KEY):
                yield from _payload(value[key], f"{path}/{key!r}")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from _payload(item, f"{path}/{i}")


def _bytes_of(tensor: torch.Tensor) -> memoryview:
    flat = tensor.detach().reshape(-1)
    if flat.device.type != "cpu":
        flat = flat.cpu()
    flat = flat.contiguous()
    if flat.numel() == 0:
        return memoryview(b"")
    return memoryview(flat.view(torch.uint8).numpy())


def digest(checkpoint: Any, algorithm: str = ALGORITHM) -> dict[str, Any]:
    """The integrity record of a checkpoint dict (or of any nest of dicts, lists and tensors).

    Each tensor's bytes are hashed in chunks of ``CHUNK`` on a few threads (hashlib releases the GIL),
    and the digest is that of every item's key path, dtype and shape followed by its chunks' digests:
    a tree hash, so a large checkpoint hashes at the speed of several cores, not one."""
    h = hashlib.new(algorithm)
    tensors = total = 0
    with ThreadPoolExecutor(max_workers=_workers()) as pool:
        for path, value in _payload(checkpoint, ""):
            if isinstance(value, torch.Tensor):
                head = f"{path}|{value.dtype}|{tuple(value.shape)}|"
                data = _bytes_of(value)
                tensors += 1
            else:
                head, data = f"{path}|bytes|{len(value)}|", memoryview(bytes(value))
            h.update(head.encode())
            chunks = [data[i:i + CHUNK] for i in range(0, data.nbytes, CHUNK)]
            if len(chunks) > 1:
                h.update(b"".join(pool.map(lambda chunk: hashlib.new(algorithm, chunk).digest(), chunks)))
            else:
                h.update(hashlib.new(algorithm, data).digest())
            total += data.nbytes
    return {"algorithm": algorithm, "digest": h.hexdigest(), "tensors": tensors, "bytes": total}


def _workers() -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(8, cores))


def stamp(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """Add (or replace) ``checkpoint["integrity"]``; returns the same dict."""
    checkpoint[KEY] = digest(checkpoint)
    return checkpoint


def verify(checkpoint: Any, path: str | os.PathLike, record: Any = None) -> bool:
    """Check a loaded checkpoint against its integrity record (``checkpoint["integrity"]``, or
    ``record`` for files that keep it elsewhere). True when verified, False when there is no record
    (an unverified file); raises :class:`CheckpointCorrupt` naming ``path`` on a mismatch."""
    if record is None:
        record = checkpoint.get(KEY) if isinstance(checkpoint, dict) else None
    if record is None:
        return False
    if not isinstance(record, dict) or record.get("algorithm") not in _ALGORITHMS:
        raise CheckpointCorrupt(f"checkpoint {str(path)!r} is corrupt: its integrity record {record!r} is not one "
                                "this llm-modules reads; use another checkpoint", "unknown integrity record")
    found = digest(checkpoint, record["algorithm"])
    if found["digest"] != record.get("digest"):
        raise CheckpointCorrupt(
            f"checkpoint {str(path)!r} is corrupt: tensor data does not match its checksum "
            f"({record.get('algorithm')}; {found['tensors']} tensors, {found['bytes']:,} bytes); it was damaged "
            "after it was written (disk, copy or transfer): use another checkpoint or copy it again"
        )
    return True


#: torch's error texts that advise unpickling (``weights_only=False``): never shown to a user
_ADVICE = re.compile(r"weights_only|trusted source|can still be loaded|file an issue|documentation of torch\.load",
                     re.IGNORECASE)


def reason(err: BaseException) -> str:
    """One line saying why ``torch.load(weights_only=True)`` refused a file, without torch's advice
    to load it with ``weights_only=False``."""
    text = str(err)
    refused = re.search(r"GLOBAL ([\w.]+)|Unsupported (operand \d+|class [\w.]+)", text)
    if isinstance(err, pickle.UnpicklingError) or "Weights only load failed" in text:
        if refused:
            what = f"global {refused.group(1)} refused" if refused.group(1) else f"unsupported {refused.group(2)}"
        else:
            what = "objects other than plain data and tensors"
        return (f"it holds Python objects, not only plain data and tensors ({what}); llm-modules never "
                "unpickles code from a file: it was not written by llm-modules or Lightning (a torch.save of a whole "
                "model object, say) or it was tampered with; save a state_dict or use llm_modules.checkpoint")
    if "PytorchStreamReader" in text or (isinstance(err, OSError) and err.errno == errno.EINVAL) \
            or isinstance(err, EOFError):
        # torch's words for a cut-off archive: "failed finding central directory", "[Errno 22] Invalid argument"
        return "the file is truncated or damaged (not a complete torch.save archive); it may have been cut " \
               "off in a copy or a failed save: use another checkpoint"
    lines = [line.strip() for line in text.splitlines() if line.strip() and not _ADVICE.search(line)]
    return lines[0] if lines else type(err).__name__


def load_verified(path: str | os.PathLike, map_location: Any = "cpu", what: str = "checkpoint",
                  mmap: bool = False, check: bool = True) -> Any:
    """``torch.load(path, weights_only=True)`` then (with ``check``) :func:`verify`; every failure is
    one ConfigError line naming ``path`` (``what`` says how the user named it, e.g. ``--ckpt_path``)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} {str(path)!r} does not exist; give the path of a .ckpt file")
    try:
        with warnings.catch_warnings():  # the unpickler's protocol warnings end in "file an issue"
            warnings.simplefilter("ignore")
            # mmap needs torch's zip format: an older or foreign file is read whole and judged on its content
            checkpoint = torch.load(path, map_location=map_location, weights_only=True,
                                    mmap=mmap and zipfile.is_zipfile(path))
    except Exception as err:  # torch raises several types for "truncated" / "not a checkpoint" / "holds code"
        problem = reason(err)
        raise CheckpointUnreadable(f"{what} {str(path)!r} cannot be read as a checkpoint: {problem}", problem) from None
    if check and isinstance(checkpoint, dict):
        stat = path.stat()
        seen = (str(path.resolve()), stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
        if seen not in _VERIFIED:  # one command reads a file several times (header, Lightning's restore)
            verify(checkpoint, path)
            _VERIFIED.add(seen)
    return checkpoint


#: files verified by this process, by identity and change times: not hashed again until they change
_VERIFIED: set[tuple] = set()


def check_finite(tensors: dict[str, Any], where: str) -> None:
    """Refuse weights of which a floating-point tensor holds no finite value at all (all NaN or
    inf): a diverged or damaged model that would only ever produce NaN, named at load rather than
    at the first forward pass."""
    for name, tensor in tensors.items():
        if not (isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and tensor.numel()):
            continue
        value = tensor.reshape(-1)[0].item()
        if not math.isfinite(value) and not torch.isfinite(tensor).any():  # a finite first entry settles it
            raise ConfigError(f"{where}: weight {name!r} {tuple(tensor.shape)} holds no finite value (every entry is "
                              f"NaN or inf, e.g. {value}); the model is broken: use another checkpoint")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj, path)`` that leaves ``path`` untouched unless the whole new file is on disk
    (``atomic_files.writing``): every checkpoint this library writes, inside the Trainer
    (``training.checkpoint_io``) or outside it (``llm_modules.checkpoint``). A dict (a checkpoint)
    gets its integrity record first."""
    if isinstance(obj, dict):
        stamp(obj)
    with writing(path) as (fd, _), os.fdopen(os.dup(fd), "wb") as f:
        torch.save(obj, f)
    return Path(path)
