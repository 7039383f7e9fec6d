"""What the per-document stage keeps of each unit: one folder per unit, committed by a rename.

Why a folder per unit, renamed into place: a task may be killed at any moment (Ctrl-C, a preempted
Slurm job, a lost Ray node). Its finished units are under their final names and are never redone;
the unit it was working on exists only as ``u-NNNNNN.tmp`` and is redone from scratch. So a
resumed run reads exactly the records an uninterrupted one would, and the records do not depend on
which task, or how many tasks, processed a unit.

A unit folder holds ``docs.npy`` (one row per document: the rule that dropped it, sizes, PII
counts, content hash, contamination, the row of its MinHash signature, its line number and where
its text is in ``texts.bin``), ``sigs.npy`` (the signatures) and ``texts.bin`` (the final texts as
JSON strings, for documents that passed the per-document rules), and last ``summary.json``. Only
plain arrays and JSON: nothing is unpickled (``np.load(allow_pickle=False)``).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from llm_modules.data.prepare.config import PII_KINDS, RULES
from llm_modules.data.prepare.processor import Result
from llm_modules.registry import ConfigError

KEPT = -1  # ``rule`` of a document no per-document rule dropped
DOC = np.dtype([
    ("rule", "i1"), ("chars", "i8"), ("nbytes", "i8"), ("out_chars", "i8"), ("out_bytes", "i8"),
    ("pii", "i4", (len(PII_KINDS),)), ("digest", "u1", (16,)), ("contaminated", "?"), ("sig_row", "i4"),
    ("number", "i8"), ("text_off", "i8"), ("text_len", "i8"),
])
_RULE_INDEX = {rule: i for i, rule in enumerate(RULES)}


def unit_name(index: int) -> str:
    return f"u-{index:06d}"


def output_line(text_json: bytes, source_id: str | None) -> bytes:
    """The JSONL line of a kept document, byte for byte what ``json.dumps({"text": ..., "source_id": ...},
    ensure_ascii=False)`` writes, from its already encoded text."""
    if source_id is None:
        return b'{"text": ' + text_json + b"}\n"
    return b'{"text": ' + text_json + b', "source_id": ' + json.dumps(source_id, ensure_ascii=False).encode() + b"}\n"


class UnitBuilder:
    """Collects one unit's results, then writes them under ``units/u-NNNNNN`` in one rename."""

    def __init__(self, num_perm: int):
        self.num_perm = num_perm
        self.rows: list[tuple] = []
        self.sigs: list[np.ndarray] = []
        self.texts: list[bytes] = []
        self.offset = 0
        self.times: dict[str, float] = {}

    def add(self, number: int, r: Result, stages: tuple[str, ...]) -> None:
        sig_row = -1
        if r.signature is not None:
            sig_row = len(self.sigs)
            self.sigs.append(r.signature)
        off = length = 0
        if r.dropped is None:
            off, length = self.offset, len(r.text_json)
            self.texts.append(r.text_json)
            self.offset += length
        digest = np.frombuffer(r.digest, dtype=np.uint8) if r.digest is not None else np.zeros(16, np.uint8)
        self.rows.append((KEPT if r.dropped is None else _RULE_INDEX[r.dropped], r.chars, r.nbytes, r.out_chars,
                          r.out_bytes, [r.pii.get(k, 0) for k in PII_KINDS], digest, r.contaminated, sig_row,
                          number, off, length))
        for name, t in zip(stages, r.times):
            self.times[name] = self.times.get(name, 0.0) + t

    def commit(self, folder: Path, index: int, lines: int) -> None:
        final = folder / unit_name(index)
        tmp = folder / (unit_name(index) + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        np.save(tmp / "docs.npy", np.array(self.rows, dtype=DOC))
        sigs = np.stack(self.sigs) if self.sigs else np.empty((0, self.num_perm), dtype=np.uint32)
        np.save(tmp / "sigs.npy", sigs.astype(np.uint32, copy=False))
        with open(tmp / "texts.bin", "wb") as f:
            f.writelines(self.texts)
        summary = {"unit": index, "documents": len(self.rows), "lines": lines, "stage_seconds": self.times}
        (tmp / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
        for path in tmp.iterdir():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
        if final.exists():  # a task that was thought lost finished it meanwhile: same content
            shutil.rmtree(tmp)
            return
        os.replace(tmp, final)


def is_done(folder: Path, index: int) -> bool:
    return (folder / unit_name(index) / "summary.json").is_file()


class UnitRecords:
    """A committed unit, read back."""

    def __init__(self, folder: Path, index: int):
        path = folder / unit_name(index)
        try:
            self.docs = np.load(path / "docs.npy", allow_pickle=False)
            self.sigs = np.load(path / "sigs.npy", allow_pickle=False)
            self.summary: dict[str, Any] = json.loads((path / "summary.json").read_text(encoding="utf-8"))
            if self.docs.dtype != DOC or len(self.docs) != self.summary["documents"]:
                raise ValueError("records do not match their summary")
        except (OSError, ValueError, KeyError) as err:
            out = path.parent.parent.parent
            raise ConfigError(f"--out {str(out)!r}: the records of unit {unit_name(index)} are damaged ({err}); "
                              "they were changed after the run stopped: rerun with --overwrite to start over") from None
        self._texts_path = path / "texts.bin"

    def texts(self) -> bytes:
        return self._texts_path.read_bytes()
