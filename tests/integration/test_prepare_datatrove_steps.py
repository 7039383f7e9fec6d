"""benchmarks/prepare_datatrove_steps.py (issue 25's check that datatrove's steps keep the same documents as
ours) runs end to end on tiny corpora: every table is printed, every row's counts add up to the corpus,
and the exact duplicates the tutorial plants are dropped by both sides."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("datatrove")
pytest.importorskip("spacy")

REPO = Path(__file__).resolve().parents[2]


def _script(monkeypatch):
    name = "prepare_datatrove_steps"
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _adds_up(row: dict) -> None:
    parts = row["dropped_by_both"] + row["only_ours"] + row["only_theirs"] + row["kept_by_both"]
    assert parts == row["documents"], row


def test_tables_for_each_corpus_and_counts_add_up(tmp_path, capsys, monkeypatch):
    out = tmp_path / "steps.json"
    assert _script(monkeypatch).main(["--size-mb", "0.5", "--families", "4", "--unrelated", "8", "--words", "80",
                           "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    results = json.loads(out.read_text())
    for name in ("tutorial", "generated", "planted"):
        for table in ("quality + repetition filters", "exact dedup", "MinHash near-duplicate dedup"):
            assert f"== {name}: {table}" in printed
        entry = results[name]
        rows = [entry["filters"]["matched"], entry["filters"]["defaults"], entry["exact"]]
        rows += [v for k, v in entry["near"].items() if "x" in k and isinstance(v, dict)]
        assert len(rows) == 5  # both MinHash configurations on tiny corpora
        for row in rows:
            assert row["documents"] == entry["documents"] > 0
            _adds_up(row)
    # the tutorial plants two exact copies (page 24 of page 5, heapq_copy.py of heapq.py): both sides drop them
    exact = results["tutorial"]["exact"]
    assert (exact["dropped_by_both"], exact["only_ours"], exact["only_theirs"]) == (2, 0, 0)
    assert results["planted"]["near"]["truth_pairs"] > 0
    for row in (v for k, v in results["planted"]["near"].items() if "x" in k and isinstance(v, dict)):
        for key in ("precision_ours", "recall_ours", "precision_theirs", "recall_theirs"):
            assert 0.0 <= row[key] <= 1.0
