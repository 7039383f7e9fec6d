"""benchmarks/load_memory.py runs (on a tiny checkpoint, so the script does not rot): it makes a
bf16 checkpoint, loads it in fresh processes with from_hf and with transformers, and reports peaks."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_load_memory_benchmark_measures_both_loaders(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("load_memory", REPO / "benchmarks" / "load_memory.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    results = bench.main(["--size", "tiny", "--folder", str(tmp_path / "ckpt"), "--json", str(tmp_path / "r.json")])
    assert [r["loader"] for r in results] == ["ours", "transformers"]
    for r in results:
        assert r["dtypes"] == ["bfloat16"] and r["finite"] and 0 < r["base_kib"] <= r["load_kib"] <= r["forward_kib"]
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["file_bytes"] == (tmp_path / "ckpt" / "model.safetensors").stat().st_size
    out = capsys.readouterr().out
    assert "peak after load" in out and "transformers:" in out and "ours:" in out
