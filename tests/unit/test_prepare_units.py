"""Units: a JSONL file cut at line ends reads back as exactly the documents, line numbers and errors
of reading the whole file, whatever the unit size."""

from __future__ import annotations

import json

import pytest

from llm_modules.data.prepare.units import UnitReader, plan_units
from llm_modules.data.sources import resolve_paths
from llm_modules.registry import ConfigError


def _whole(source) -> list[tuple[str, str]]:
    return [(d.source_id, d.text) for d in source.documents(screen=False)]


def _by_units(source, unit_bytes: int) -> list[tuple[str, str]]:
    docs, offset = [], 0
    for unit in plan_units([source], unit_bytes):
        reader = UnitReader(source, unit)
        docs += [(f"{source.source_id}#{offset + number}", text) for number, text in reader]
        offset += reader.lines
    return docs


@pytest.fixture
def jsonl(tmp_path):
    lines = []
    for i in range(40):
        text = f"doc {i} " + "é漢" * (i % 5) + ("\nsecond line" if i % 3 else "")
        lines.append(json.dumps({"text": text}, ensure_ascii=i % 2 == 0))
    raw = "\r\n".join(lines[:10]) + "\r\n\n   \n" + "\n".join(lines[10:30]) + "\r" + "\n".join(lines[30:])  # no final \n
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(raw.encode("utf-8") + b"\n" + b'{"text": "bad \xff byte"}')
    return resolve_paths([str(path)], field="inputs")[0]


@pytest.mark.parametrize("unit_bytes", [1, 7, 64, 333, 10_000])
def test_units_read_the_documents_of_the_whole_file(jsonl, unit_bytes):
    units = plan_units([jsonl], unit_bytes)
    size = jsonl.path.stat().st_size
    assert units[0].start == 0 and units[-1].end == size
    assert all(a.end == b.start for a, b in zip(units, units[1:]))
    data = jsonl.path.read_bytes()
    assert all(data[u.end - 1:u.end] == b"\n" for u in units[:-1])  # cuts sit just after a newline
    assert _by_units(jsonl, unit_bytes) == _whole(jsonl)
    assert (len(units) > 1) == (unit_bytes < size)


def test_a_bad_line_names_its_place(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "a"}\n{"text": "b"}\nnot json\n', encoding="utf-8")
    source = resolve_paths([str(path)], field="inputs")[0]
    (first, second) = plan_units([source], 20)
    list(UnitReader(source, first))
    with pytest.raises(ConfigError, match=r"bad.jsonl' line 3 is not valid JSON"):
        list(UnitReader(source, second))


def test_a_text_file_is_one_unit(tmp_path):
    path = tmp_path / "page.txt"
    path.write_text("x " * 5000, encoding="utf-8")
    source = resolve_paths([str(path)], field="inputs")[0]
    units = plan_units([source], 10)
    assert len(units) == 1
    assert [t for _, t in UnitReader(source, units[0])] == [path.read_text()]
