"""benchmarks/prepare.py runs (on a small corpus, so the script does not rot): the baseline revision
exported with git archive, and today's command with 2 workers, writing identical shards."""

from __future__ import annotations

import importlib.util
import json
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_the_prepare_benchmark_compares_the_baseline_and_writes_the_same_shards(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("prepare_bench", REPO / "benchmarks" / "prepare.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    known = subprocess.run(["git", "-C", str(REPO), "cat-file", "-e", f"{bench.BASELINE_REV}^{{commit}}"],
                           capture_output=True)
    if known.returncode:
        pytest.skip(f"not a git checkout holding the baseline revision {bench.BASELINE_REV}")
    code = bench.main(["--size-mb", "1", "--runs", "baseline,local-2", "--json", str(tmp_path / "r.json")])
    assert code == 0
    runs = json.loads((tmp_path / "r.json").read_text())["runs"]
    assert set(runs) == {"baseline", "local-2"} and all(r["identical"] for r in runs.values())
    assert "dedup+write" in runs["baseline"]["stage_seconds"]  # the old pipeline ran, not today's
    assert "select" in runs["local-2"]["stage_seconds"]
    out = capsys.readouterr().out
    assert "shards identical to baseline" in out
