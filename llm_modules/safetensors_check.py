"""Safetensors files whose header lies, refused in one line before a byte of tensor data is read.

A safetensors file is an 8-byte little-endian header length, a JSON header (for each tensor its
dtype, shape and ``data_offsets`` into the data that follows) and the data. The safetensors library
rejects most inconsistent files, but with a Rust error type and a message that names neither the file
nor which tensor is wrong; a length field of petabytes, offsets past the end of the file, a shape
larger than its data or a header that is not JSON become tracebacks. :func:`check_header` reads the
header alone and names the file and the problem; :func:`load_safetensors` is ``load_file`` behind it.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from llm_modules.registry import ConfigError

#: bytes per element of each dtype name a header may use (sub-byte and unknown ones are not size-checked)
ITEM_SIZES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4, "U16": 2,
    "U8": 1, "BOOL": 1, "C64": 8, "F8_E4M3": 1, "F8_E4M3FNUZ": 1, "F8_E5M2": 1, "F8_E5M2FNUZ": 1, "F8_E8M0": 1,
}
#: the safetensors library's own limit on the header
MAX_HEADER = 100_000_000


def check_header(path: str | os.PathLike) -> dict[str, Any]:
    """The parsed JSON header of the safetensors file ``path``; ConfigError naming the file and the
    first inconsistency found (length, JSON, dtype, shape, offsets against the file's real size)."""
    path = Path(path)
    size = path.stat().st_size
    where = f"safetensors file {str(path)!r}"
    if size < 8:
        raise ConfigError(f"{where} is {size} bytes, too short to hold a header; the file is truncated or not "
                          "safetensors")
    with open(path, "rb") as f:
        length = int.from_bytes(f.read(8), "little")
        if length > min(MAX_HEADER, size - 8):
            raise ConfigError(f"{where} is corrupt: its header length field says {length:,} bytes but the file "
                              f"holds {size - 8:,} after it (limit {MAX_HEADER:,}); the file is truncated or "
                              "not safetensors")
        raw = f.read(length)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"{where} is corrupt: its header is not valid JSON ({err}); the file is damaged or not "
                          "safetensors") from None
    if not isinstance(header, dict):
        raise ConfigError(f"{where} is corrupt: its header is a JSON {type(header).__name__}, not an object")
    data_size = size - 8 - length
    for name, info in header.items():
        if name == "__metadata__":
            if not isinstance(info, dict):
                raise ConfigError(f"{where} is corrupt: its __metadata__ is not an object of strings")
            continue
        _check_entry(where, name, info, data_size)
    return header


def _check_entry(where: str, name: str, info: Any, data_size: int) -> None:
    if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= set(info):
        raise ConfigError(f"{where} is corrupt: tensor {name!r} lacks dtype, shape or data_offsets in the header")
    shape, offsets = info["shape"], info["data_offsets"]
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise ConfigError(f"{where} is corrupt: tensor {name!r} has shape {shape!r}, not a list of sizes")
    if (not isinstance(offsets, list) or len(offsets) != 2 or not all(isinstance(o, int) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1]):
        raise ConfigError(f"{where} is corrupt: tensor {name!r} has data_offsets {offsets!r}, not [begin, end]")
    if offsets[1] > data_size:
        raise ConfigError(f"{where} is corrupt: tensor {name!r} data_offsets {offsets} run past the end of the "
                          f"file ({data_size:,} bytes of data); the file is truncated")
    item = ITEM_SIZES.get(info["dtype"])
    if item is not None and math.prod(shape) * item != offsets[1] - offsets[0]:
        raise ConfigError(f"{where} is corrupt: tensor {name!r} of shape {shape} and dtype {info['dtype']} needs "
                          f"{math.prod(shape) * item:,} bytes but its data_offsets hold {offsets[1] - offsets[0]:,}")


def load_safetensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file, after :func:`check_header`; any error the library still
    raises is one ConfigError line naming the file."""
    check_header(path)
    try:
        return load_file(str(path))
    except Exception as err:  # SafetensorError (Rust), or its Python checks
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ConfigError(f"safetensors file {str(path)!r} cannot be read: {first}") from None
