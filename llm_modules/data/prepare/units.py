"""Units: the pieces of the input that tasks share out, whatever the executor.

Why units rather than files: a task of the per-document stage works on whole units and commits
each unit's results at once (``records``), so a unit is both the grain of parallel work and the
grain of resume. A text file is one unit (it is one document); a JSONL file larger than
``executor.unit_mb`` is cut, at line ends, into units of about that size, so one big dump still
spreads over every worker and a killed task redoes at most one unit per task.

A JSONL unit is read with exactly the line splitting of ``SourceFile`` (text mode, universal
newlines, undecodable bytes replaced): every cut sits just after a ``\\n``, which ends a line in
both, so the documents and their order are those of reading the whole file. Line numbers (the
``#N`` of a source id) count from the start of the unit; the select stage adds the lines of the
file's earlier units (``line_offsets``), since a task does not read the units before its own.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from llm_modules.data.sources import SourceFile
from llm_modules.data.text_reading import _COUNTING
from llm_modules.registry import ConfigError


@dataclass(frozen=True)
class Unit:
    file: int  # index of the input file
    start: int  # byte offset of the unit's first line (0 for a text file)
    end: int  # byte offset just past its last line (the file size for the last unit)


def plan_units(files: Sequence[SourceFile], unit_bytes: int) -> list[Unit]:
    """The units of ``files`` in input order (cuts found by seeking: the files are not read)."""
    units: list[Unit] = []
    for index, source in enumerate(files):
        size = source.stat()[0]
        start = 0
        if source.kind == "jsonl":
            with open(source.path, "rb") as f:
                while start + unit_bytes < size:
                    f.seek(start + unit_bytes - 1)
                    f.readline()  # to just past the next b"\n" at or after the target
                    cut = f.tell()
                    if cut >= size:
                        break
                    units.append(Unit(index, start, cut))
                    start = cut
        units.append(Unit(index, start, size))
    return units


class UnitReader:
    """The documents of one unit, as ``(line number within the unit, text)`` (0 for a text file's one
    document); after iterating, ``lines`` is how many lines the unit holds (JSONL), which later units
    of the file need to number theirs."""

    def __init__(self, source: SourceFile, unit: Unit):
        self.source, self.unit, self.lines = source, unit, 0

    def __iter__(self) -> Iterator[tuple[int, str]]:
        source, unit = self.source, self.unit
        if source.kind != "jsonl":
            for doc in source.documents(screen=False):  # the binary rule judges, not the reader
                yield 0, doc.text
            return
        with open(source.path, "rb") as f:
            f.seek(unit.start)
            data = f.read(unit.end - unit.start)
        for number, line in enumerate(_lines(data), start=1):
            self.lines = number
            if line.strip():
                try:
                    text = source.record_text(line, f"line {number}")
                except ConfigError:  # name the line as in the whole file: count the lines before the unit
                    before = sum(1 for _ in _lines(_head(source, unit.start)))
                    source.record_text(line, f"line {before + number}")
                    raise
                yield number, text


def _lines(data: bytes) -> Iterator[str]:
    return io.TextIOWrapper(io.BytesIO(data), encoding="utf-8", errors=_COUNTING)


def _head(source: SourceFile, end: int) -> bytes:
    with open(source.path, "rb") as f:
        return f.read(end)
