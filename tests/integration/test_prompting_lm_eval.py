"""Demonstration design and chain-of-thought through lm-eval's own evaluator (``simple_evaluate``), on
tiny local tasks and a scripted model: the answer is extracted from each generation by the pattern,
self-consistency samples k generations and exact match is computed on their majority answer, and a
multiple-choice task is scored on the templated prompt. Skipped without lm-eval (the ``eval`` extra)."""

from __future__ import annotations

import pytest

from _prompting_helpers import fake_lm, load_tasks, write_task

pytest.importorskip("lm_eval")

from llm_modules.evaluation.prompting import PromptDesign, apply_design  # noqa: E402

SAMPLES = {  # canned samples per question: the first is wrong, the majority right
    "where did the cat sit on the mat": ["so the answer is 7.", "The answer is 9.", "Cats sit. The answer is 9.\nQ: x"],
    "what fell on monday": ["The answer is 3.", "the answer is 4", "The answer is 4."],
}


def _script(context: str, call: int) -> str:
    question = next(q for q in SAMPLES if q in context)
    return SAMPLES[question][call % 3]


def _evaluate(tasks, lm, **options):
    from lm_eval.evaluator import simple_evaluate
    from lm_eval.tasks import TaskManager

    # a manager without lm-eval's own catalogue: indexing its thousands of tasks takes half a minute
    return simple_evaluate(model=lm, tasks=list(tasks.values()), bootstrap_iters=0,
                           task_manager=TaskManager(include_defaults=False), **options)


def test_self_consistency_scores_the_majority_of_k_sampled_answers(tmp_path):
    tasks = load_tasks(write_task(tmp_path))
    apply_design(tasks, PromptDesign(demonstrations="bm25", cot="fewshot", self_consistency=3, temperature=0.6))
    lm = fake_lm(_script)
    out = _evaluate(tasks, lm, num_fewshot=2)
    scores = out["results"]["tiny_qa"]
    assert scores["exact_match,maj@3"] == 1.0  # 9 and 4 win the votes
    assert scores["exact_match,first"] == 0.0  # the first samples alone: 7 and 3
    assert len(lm.asked) == 6 and all(kwargs["do_sample"] and kwargs["temperature"] == 0.6 for _, kwargs in lm.asked)
    prompt = lm.asked[0][0]
    assert "The answer is cat.\n\nthe cat sat on the mat Cats like mats. The answer is mat.\n\n" in prompt
    logged = {(s["filter"], s["doc"]["answer"]): s["filtered_resps"] for s in out["samples"]["tiny_qa"]}
    assert logged == {("maj@3", "9"): ["9"], ("maj@3", "4"): ["4"], ("first", "9"): ["7"], ("first", "4"): ["3"]}
    assert out["configs"]["tiny_qa"]["metadata"]["prompt_design"]["self_consistency"] == 3


def test_answer_extraction_by_pattern_with_the_zero_shot_trigger(tmp_path):
    tasks = load_tasks(write_task(tmp_path))
    apply_design(tasks, PromptDesign(cot="zeroshot", answer_pattern=r"answer is (\d+)"))
    lm = fake_lm(lambda context, call: SAMPLES[next(q for q in SAMPLES if q in context)][1])
    scores = _evaluate(tasks, lm, num_fewshot=0)["results"]["tiny_qa"]
    assert scores["exact_match,extract"] == 1.0
    assert all(context.endswith(" Let's think step by step.") for context, _ in lm.asked)


def test_a_multiple_choice_task_is_scored_on_the_templated_prompt(tmp_path):
    tasks = load_tasks(write_task(tmp_path, output_type="multiple_choice"))
    apply_design(tasks, PromptDesign(demonstrations="bm25", demo_template="Q: {{question}}\nA: {{target}}"))
    from lm_eval.api.model import LM

    class Recording(LM):
        def __init__(self):
            super().__init__()
            self.seen = []

        def loglikelihood(self, requests, disable_tqdm=False):
            self.seen.extend(r.args for r in requests)
            # prefers each question's gold answer, but only on the templated prompt
            gold = {"the mat\nA:": " 9", "monday\nA:": " 4"}
            return [(0.0 if any(ctx.endswith(end) and cont == g for end, g in gold.items()) else -1.0, False)
                    for ctx, cont in (r.args for r in requests)]

        def loglikelihood_rolling(self, requests, disable_tqdm=False):
            raise AssertionError

        def generate_until(self, requests, disable_tqdm=False):
            raise AssertionError

    lm = Recording()
    scores = _evaluate(tasks, lm, num_fewshot=1)["results"]["tiny_qa"]
    assert scores["acc,none"] == 1.0
    assert lm.seen[0][0] == "Q: the cat sat on the mat\nA: mat\n\nQ: where did the cat sit on the mat\nA:"
    assert lm.seen[0][1] == " mat"
