"""benchmarks/lm_eval_speed.py runs (tiny sizes) and reports requests/s for both models, after checking
that their results agree."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("lm_eval")
pytest.importorskip("accelerate")

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))


def test_benchmark_reports_both_models_on_agreeing_results(tmp_path, capsys):
    import lm_eval_speed

    out = tmp_path / "speed.json"
    lm_eval_speed.main(["--d-model", "32", "--layers", "1", "--questions", "3", "--prompts", "3", "--new-tokens", "4",
                        "--rounds", "1", "--files", "40", "--batch-size", "4", "--threads", "1", "--json", str(out)])
    figures = json.loads(out.read_text())
    for kind, count in (("loglikelihood", 12), ("generate_until", 3)):
        assert figures[kind]["requests"] == count
        assert figures[kind]["llm_modules_per_s"] > 0 and figures[kind]["hf_per_s"] > 0
    assert "llm-modules" in capsys.readouterr().out
