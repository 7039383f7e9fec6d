"""Shared by the checkpoint integrity / unpickling tests: damaging a real checkpoint's tensor bytes,
planting a pickle that runs code, and running a command in-process expecting one clean error line."""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path

import torch

from llm_modules.cli import main

MARKER = "PWNED"


class Planted:
    """Unpickling this creates the file ``MARKER`` in the current folder: proof that code ran."""

    def __reduce__(self):
        return (open, (MARKER, "w"))


def plant(path: Path, **entries) -> Path:
    """A checkpoint-looking file (a real torch zip) whose pickle calls ``open(MARKER, 'w')``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {"w": torch.zeros(2)}, "global_step": 99, "hook": Planted(), **entries}, path)
    return path


def flip_tensor_byte(path: Path) -> int:
    """Flip one byte in the middle of the largest tensor's data inside a torch zip checkpoint, in
    place: the zip still opens and ``torch.load`` still succeeds. Returns the byte offset."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        big = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    name_len, extra_len = struct.unpack("<HH", data[big.header_offset + 26:big.header_offset + 30])
    offset = big.header_offset + 30 + name_len + extra_len + big.file_size // 2
    data[offset] ^= 0x5A
    path.write_bytes(bytes(data))
    return offset


def refused(args: list[str], capsys, *expected: str) -> str:
    """Run ``llm-modules ARGS`` in-process; assert exit 2 and exactly one clean error line on
    stderr holding every ``expected`` text and never torch's advice to unpickle. Returns the line."""
    capsys.readouterr()
    code = main(args)
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if ": error: " in line]
    assert code == 2, f"exit {code}; stderr:\n{err[-3000:]}"
    assert len(errors) == 1, err[-3000:]
    assert "Traceback" not in err + out
    assert "weights_only" not in err + out and "trusted source" not in err + out
    for text in expected:
        assert text in errors[0], errors[0]
    return errors[0]
