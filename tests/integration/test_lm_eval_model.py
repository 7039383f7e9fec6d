"""The lm-eval model over an llm-modules checkpoint (llm_modules.evaluation.lm_eval_model) answers lm-eval's
three request types exactly as lm-eval's own Hugging Face model does on the checkpoint's export: the same
log-likelihoods (1e-4) and greedy flags, empty contexts included, the same rolling log-likelihood over
several windows, the same greedy generations. Skipped without lm-eval (the ``eval`` extra)."""

from __future__ import annotations

from pathlib import Path

import pytest

from _fit_helpers import tiny

pytest.importorskip("lm_eval")
pytest.importorskip("accelerate")  # lm-eval's HF model needs it

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def models(corpus, cache, tmp_path_factory):
    from lm_eval.models.huggingface import HFLM

    from llm_modules.cli import main
    from llm_modules.evaluation.lm_eval_model import LLMModulesLM

    root = tmp_path_factory.mktemp("lm_eval")
    ckpt = root / "model.ckpt"
    args = tiny(REPO / "configs" / "quickstart.yaml", corpus, cache, steps=5)
    assert main(["fit", *args, "--trainer.default_root_dir", str(root), "--trainer.accelerator", "cpu"]) == 0
    trained = sorted(root.glob("**/checkpoints/last.ckpt"))[-1]
    assert main(["export", str(trained), str(root / "hf")]) == 0
    return LLMModulesLM(str(trained), batch_size=3), HFLM(pretrained=str(root / "hf"), batch_size=3, device="cpu")


def _requests(kind: str, args: list[tuple]):
    from lm_eval.api.instance import Instance

    return [Instance(kind, {}, a, i) for i, a in enumerate(args)]


def test_loglikelihoods_equal_lm_evals_hf_model(models):
    ours, hf = models
    pairs = [("def foo(x):", " return x"), ("import os\n", "import sys"), ("class A", ":\n    pass"),
             ("", "hello world"), ("x = 1 ", "+ 2")]
    got = ours.loglikelihood(_requests("loglikelihood", pairs), disable_tqdm=True)
    expected = hf.loglikelihood(_requests("loglikelihood", pairs), disable_tqdm=True)
    for (score, greedy), (ref, ref_greedy) in zip(got, expected):
        assert score == pytest.approx(ref, abs=1e-4) and greedy == ref_greedy


def test_rolling_loglikelihood_over_several_windows_equals_lm_evals(models):
    ours, hf = models
    text = [("def f():\n    return 1\n" * 30,)]
    assert len(ours.tok_encode(text[0][0])) > 2 * ours.max_length  # several windows
    got = ours.loglikelihood_rolling(_requests("loglikelihood_rolling", text), disable_tqdm=True)
    expected = hf.loglikelihood_rolling(_requests("loglikelihood_rolling", text), disable_tqdm=True)
    assert got[0] == pytest.approx(expected[0], abs=1e-3)


def test_greedy_generation_stops_where_lm_evals_does(models):
    ours, hf = models
    args = [("def main(", {"until": ["\n"], "max_gen_toks": 12}), ("import", {"until": [")"], "max_gen_toks": 8})]
    assert ours.generate_until(_requests("generate_until", args)) == hf.generate_until(
        _requests("generate_until", args))
