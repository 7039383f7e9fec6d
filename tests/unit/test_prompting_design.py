"""``PromptDesign`` and its command-line flags: plain data checked when made, each bad value one line
naming the field and the closest valid value; flags left out mean no design at all. Needs no lm-eval."""

from __future__ import annotations

import argparse

import pytest

from llm_modules.evaluation.prompting import PromptDesign, add_arguments, design_from_args
from llm_modules.registry import ConfigError


def _args(*argv: str) -> argparse.Namespace:
    return add_arguments(argparse.ArgumentParser()).parse_args(list(argv))


def test_flags_make_a_design_of_plain_data():
    assert design_from_args(_args()) is None  # nothing asked: the tasks stay lm-eval's own
    design = design_from_args(_args(
        "--demonstrations", "mmr", "--mmr_lambda", "0.3", "--similarity", "bm25", "--order", "random",
        "--demo_seed", "7", "--demo_template", "Q: {{question}}\\nA: {{target}}", "--demo_separator", "\\n\\n",
        "--cot", "fewshot", "--answer_pattern", "= (\\d+)", "--self_consistency", "5", "--temperature", "0.5"))
    assert design == PromptDesign(
        demonstrations="mmr", mmr_lambda=0.3, similarity="bm25", order="random", seed=7,
        demo_template="Q: {{question}}\nA: {{target}}", separator="\n\n", cot="fewshot",
        answer_pattern="= (\\d+)", self_consistency=5, temperature=0.5)
    assert design.to_dict()["mmr_lambda"] == 0.3 and design.pattern == "= (\\d+)"
    zero = design_from_args(_args("--cot", "zeroshot"))
    assert zero.cot_trigger == "Let's think step by step." and zero.pattern.startswith("[Tt]he answer is")
    assert not zero.selects and zero.generative


def test_unset_fields_resolve_to_what_the_selection_implies():
    assert PromptDesign(demonstrations="bm25").ordering == "similar-last"
    assert PromptDesign(demonstrations="random").ordering == "random"
    assert PromptDesign(order="similar-last").strategy == "random"  # an order alone selects at random
    assert PromptDesign(demonstrations="mmr").similarity_measure == "bm25" and PromptDesign(demonstrations="mmr").lam == 0.5
    assert PromptDesign(demonstrations="mmr", similarity="embedding").needs_embeddings
    assert not PromptDesign(demonstrations="random").needs_embeddings
    assert PromptDesign(self_consistency=3).sampling_temperature == 0.7


@pytest.mark.parametrize("argv, message", [
    (["--demonstrations", "bm52"], "demonstrations: unknown 'bm52' (did you mean 'bm25'?); choose one of random, bm25, embedding, mmr"),
    (["--order", "similar_last"], "order: unknown 'similar_last' (did you mean 'similar-last'?)"),
    (["--cot", "few-shot"], "cot: unknown 'few-shot' (did you mean 'fewshot'?)"),
    (["--similarity", "embeding", "--demonstrations", "mmr"], "similarity: unknown 'embeding' (did you mean 'embedding'?)"),
    (["--demonstrations", "bm25", "--similarity", "embedding"], "similarity: --demonstrations bm25 ranks by bm25"),
    (["--mmr_lambda", "0.5"], "mmr_lambda: only used with --demonstrations mmr"),
    (["--demonstrations", "mmr", "--mmr_lambda", "1.5"], "mmr_lambda: 1.5 is outside [0, 1]"),
    (["--demonstrations", "mmr", "--mmr_lambda", "high"], "mmr_lambda: --mmr_lambda 'high' is not a float"),
    (["--self_consistency", "0"], "self_consistency: 0 samples"),
    (["--self_consistency", "2.5"], "self_consistency: --self_consistency '2.5' is not an int"),
    (["--temperature", "0.5"], "temperature: only used to sample self-consistency paths"),
    (["--self_consistency", "3", "--temperature", "0"], "temperature: 0.0 must be > 0"),
    (["--answer_pattern", "(\\d+"], "answer_pattern: '(\\\\d+' is no regular expression"),
    (["--demo_template", "Q: {{question}"], "demo_template: 'Q: {{question}' is no jinja template"),
    (["--cot", "zeroshot", "--cot_trigger", " "], "cot_trigger: empty"),
])
def test_bad_settings_are_one_line_naming_the_field(argv, message):
    with pytest.raises(ConfigError) as err:
        design_from_args(_args(*argv))
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_fields_have_plain_types():
    with pytest.raises(ConfigError, match="^seed: '1' is not an int$"):
        PromptDesign(seed="1")
    with pytest.raises(ConfigError, match="^self_consistency: True is not a"):
        PromptDesign(self_consistency=True)
    assert PromptDesign(demonstrations="mmr", mmr_lambda=1).mmr_lambda == 1.0  # an int where a float goes


def test_without_lm_eval_the_design_imports_and_applying_says_how_to_install_it(monkeypatch):
    import subprocess
    import sys

    code = ("import sys, llm_modules.evaluation.prompting as p; p.design_from_args; "
            "assert 'lm_eval' not in sys.modules, 'lm_eval imported'")
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # as if not installed
    monkeypatch.delitem(sys.modules, "lm_eval.api.task", raising=False)
    from llm_modules.evaluation.prompting import apply_design

    with pytest.raises(ConfigError, match=r"^install the eval extra: pip install 'llm-modules\[eval\]'$"):
        apply_design({}, PromptDesign(demonstrations="bm25"))


def test_a_design_from_a_config_mapping():
    assert PromptDesign.from_dict(None) is None and PromptDesign.from_dict({}) is None
    assert PromptDesign.from_dict({"demonstrations": "bm25", "seed": 3}) == PromptDesign(demonstrations="bm25", seed=3)
    with pytest.raises(ConfigError, match=r"^prompting: unknown field 'demonstration' \(did you mean 'demonstrations'\?\)"):
        PromptDesign.from_dict({"demonstration": "bm25"})
    assert PromptDesign.from_dict(PromptDesign(cot="zeroshot").to_dict()) == PromptDesign(cot="zeroshot")
