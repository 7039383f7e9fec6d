"""Demonstration design applied to a tiny local lm-eval task (YAML + JSONL written by the test): the
prompts lm-eval builds hold the chosen demonstrations, in the chosen order and format; the evaluated
document is never its own demonstration; chain-of-thought rationales and trigger are where they
belong. Skipped without lm-eval (the ``eval`` extra)."""

from __future__ import annotations

import pytest
import torch

from _prompting_helpers import TEST, TRAIN, contexts, load_tasks, write_task

pytest.importorskip("lm_eval")

from llm_modules.evaluation.prompting import PromptDesign, apply_design  # noqa: E402
from llm_modules.registry import ConfigError  # noqa: E402


@pytest.fixture
def task_dict(tmp_path):
    return load_tasks(write_task(tmp_path))


def test_bm25_demonstrations_in_template_and_order_most_similar_last(task_dict):
    design = PromptDesign(demonstrations="bm25", demo_template="Q: {{question}}\nA: {{target}}", separator="\n---\n")
    apply_design(task_dict, design)
    first, second = contexts(task_dict["tiny_qa"], 2)
    # 'where did the cat sit on the mat': the two cat/mat documents, the closer one last; the few-shot
    # split is not the test split, so lm-eval alone would not even tell the sampler the document
    assert first == ("Q: the cat slept on the warm mat\nA: cat\n---\n"
                     "Q: the cat sat on the mat\nA: mat\n---\n"
                     "Q: where did the cat sit on the mat\nA:")
    assert second.endswith("Q: stocks fell sharply on monday\nA: stocks\n---\nQ: what fell on monday\nA:")


def test_without_templates_the_layout_is_lm_evals_own(task_dict):
    apply_design(task_dict, PromptDesign(demonstrations="bm25", order="random", seed=3))
    first = contexts(task_dict["tiny_qa"], 2)[0]
    demos = {f"{d['question']} {d['answer']}" for d in TRAIN[:1] + TRAIN[3:4]}
    assert set(first.split("\n\n")[:2]) == demos and first.endswith("\n\nwhere did the cat sit on the mat")


def test_the_evaluated_document_is_never_its_own_demonstration(tmp_path):
    # the pool holds the evaluated documents themselves (few-shot split == test split) ...
    same = load_tasks(write_task(tmp_path / "same", fewshot_split="test", test=TEST + TRAIN[:2]))
    apply_design(same, PromptDesign(demonstrations="bm25"))
    task = same["tiny_qa"]
    for doc, ctx in zip(task.eval_docs, contexts(task, 3)):
        demos = ctx.split("\n\n")[:-1]
        assert f"{doc['question']} {doc['answer']}" not in demos and len(demos) == 3
    # ... or a copy of one in another split, which lm-eval's own sampler is never told about
    copy = load_tasks(write_task(tmp_path / "copy", train=TRAIN + [TEST[0]]))
    apply_design(copy, PromptDesign(demonstrations="bm25"))
    assert TEST[0]["question"] + " 9" not in contexts(copy["tiny_qa"], 5)[0]
    with pytest.raises(ConfigError, match="num_fewshot: 6 demonstrations asked.*holds 5 besides the evaluated"):
        contexts(copy["tiny_qa"], 6)


def test_random_selection_is_reproducible_per_document_and_follows_the_seed(tmp_path):
    def prompts(seed, reverse=False):
        tasks = load_tasks(write_task(tmp_path / f"s{seed}{reverse}"))
        apply_design(tasks, PromptDesign(demonstrations="random", seed=seed))
        task = tasks["tiny_qa"]
        task.set_fewshot_seed(99)  # what lm-eval's evaluator does: the design's seed still governs
        docs = list(task.eval_docs)[::-1] if reverse else list(task.eval_docs)
        return {d["question"]: task.fewshot_context(d, num_fewshot=3) for d in docs}

    assert prompts(1) == prompts(1) == prompts(1, reverse=True)  # whatever the evaluation order
    assert any(prompts(s) != prompts(1) for s in (2, 3, 4))


def test_embedding_and_mmr_selection(task_dict, tmp_path):
    words = ["cat", "mat", "dog", "stocks", "monday", "rain", "fell"]

    def embed(texts):  # bag of words: a stand-in for the model's embeddings
        return torch.tensor([[float(t.split().count(w)) + 0.01 for w in words] for t in texts])

    with pytest.raises(ConfigError, match="demonstrations: 'embedding' needs the model's embeddings"):
        apply_design(task_dict, PromptDesign(demonstrations="embedding"))
    apply_design(task_dict, PromptDesign(demonstrations="embedding"), embed=embed)
    first = contexts(task_dict["tiny_qa"], 2)[0]
    assert first.split("\n\n")[:2] == ["the cat slept on the warm mat cat", "the cat sat on the mat mat"]

    # near-duplicate cat/mat documents: k-nearest takes both, MMR the best one and something else
    pool = TRAIN[:1] + [{**TRAIN[0], "answer": "x"}, *TRAIN[1:]]
    tasks = load_tasks(write_task(tmp_path / "dups", train=pool))
    apply_design(tasks, PromptDesign(demonstrations="bm25"))
    knn = contexts(tasks["tiny_qa"], 2)[0].split("\n\n")[:2]
    apply_design(tasks, PromptDesign(demonstrations="mmr", mmr_lambda=0.3))
    diverse = contexts(tasks["tiny_qa"], 2)[0].split("\n\n")[:2]
    assert all(d.startswith("the cat sat on the mat") for d in knn)
    assert diverse[-1].startswith("the cat sat on the mat") and not diverse[0].startswith("the cat sat on the mat")


def test_chain_of_thought_rationales_and_trigger(task_dict):
    apply_design(task_dict, PromptDesign(demonstrations="bm25", cot="fewshot"))
    first = contexts(task_dict["tiny_qa"], 1)[0]
    assert first == "the cat sat on the mat Cats like mats. The answer is mat.\n\nwhere did the cat sit on the mat"
    apply_design(task_dict, PromptDesign(cot="zeroshot"))
    for ctx in contexts(task_dict["tiny_qa"], 0):
        assert ctx.endswith("on monday Let's think step by step.") or ctx.endswith("mat Let's think step by step.")
    task = task_dict["tiny_qa"]
    assert [f.name for f in task._filters] == ["extract"]
    assert task.config.metadata["prompt_design"]["cot"] == "zeroshot"


def test_settings_that_do_not_fit_the_tasks_fail_in_one_line(task_dict, tmp_path):
    cases = [
        (PromptDesign(cot="fewshot", rationale_field="rationales"),
         "rationale_field: 'rationales' is no field of the few-shot documents of tiny_qa (did you mean 'rationale'?)"),
        (PromptDesign(demo_template="Q: {{questoin}} {{target}}"), "demo_template: 'questoin' is undefined (did you mean 'question'?)"),
        (PromptDesign(demo_template="{{question}}!"), "question_template: give one; demo_template"),
    ]
    for design, message in cases:
        apply_design(task_dict, design)
        with pytest.raises(ConfigError) as err:
            contexts(task_dict["tiny_qa"], 1)
        assert str(err.value).startswith(message) and "\n" not in str(err.value)
    choice = load_tasks(write_task(tmp_path / "mc", output_type="multiple_choice"))
    with pytest.raises(ConfigError, match="^self_consistency: .*no task here generates \\(tiny_qa score"):
        apply_design(choice, PromptDesign(self_consistency=3))


def test_a_second_design_replaces_the_first(task_dict):
    task = task_dict["tiny_qa"]
    apply_design(task_dict, PromptDesign(demonstrations="bm25", cot="fewshot", self_consistency=4))
    assert task.config.repeats == 4 and [f.name for f in task._filters] == ["maj@4", "first"]
    assert task.config.generation_kwargs["do_sample"] is True
    apply_design(task_dict, PromptDesign(separator="\n"))
    assert task.config.repeats == 1 and [f.name for f in task._filters] == ["none"]
    assert "do_sample" not in task.config.generation_kwargs
    assert task.config.metadata["prompt_design"]["self_consistency"] == 1
    assert type(task.sampler).__name__ == "ContextSampler"  # lm-eval's own sampler again
    assert all(len(c.split("\n")) == 3 for c in contexts(task, 2))  # 2 demonstrations, then the question


def test_the_evaluate_hook_embeds_with_the_model_only_when_the_design_asks(task_dict):
    from types import SimpleNamespace

    from _core_helpers import tiny_config
    from llm_modules import CausalLM
    from llm_modules.evaluation.prompting import task_preparer

    class Chars:
        eos_id = 2

        def encode(self, text):
            return [3 + ord(c) % 40 for c in text]

    torch.manual_seed(0)
    lm = SimpleNamespace(module=CausalLM(tiny_config()), tokenizer=Chars(), max_length=32)
    assert task_preparer(None, lm)(task_dict) is task_dict
    task_preparer(PromptDesign(demonstrations="mmr", similarity="embedding"), lm)(task_dict)
    prompts = contexts(task_dict["tiny_qa"], 2)
    assert all(len(p.split("\n\n")) == 3 for p in prompts)
    assert task_dict["tiny_qa"].sampler.similarity().vectors.shape == (len(TRAIN), 32)


def test_chain_of_thought_leaves_log_likelihood_tasks_of_a_mix_alone(tmp_path):
    root = write_task(write_task(tmp_path), "tiny_mc", output_type="multiple_choice")
    tasks = load_tasks(root, "tiny_qa", "tiny_mc")
    apply_design(tasks, PromptDesign(cot="zeroshot", self_consistency=3))
    assert contexts(tasks["tiny_qa"], 0)[0].endswith("Let's think step by step.")
    assert contexts(tasks["tiny_mc"], 0)[0] == "where did the cat sit on the mat"
    assert tasks["tiny_mc"].config.repeats == 1 and tasks["tiny_qa"].config.repeats == 3


def test_every_shape_lm_eval_hands_out_is_walked_to_its_tasks(tmp_path):
    from lm_eval.tasks import TaskManager

    from llm_modules.evaluation.prompting.apply import iter_tasks

    root = write_task(tmp_path)
    (root / "grp.yaml").write_text("group: grp\ntask:\n  - tiny_qa\n")
    manager = TaskManager(include_path=str(root), include_defaults=False)
    flat = manager.load(["grp"])  # {"tasks", "groups", "group_map"}: the task reached twice, listed once
    assert [t.config.task for t in iter_tasks(flat)] == ["tiny_qa"]
    nested = load_tasks(root, "grp")  # {ConfigurableGroup: {"tiny_qa": task}}
    assert [t.config.task for t in iter_tasks(nested)] == ["tiny_qa"]
    task = next(iter(iter_tasks(nested)))
    assert [t is task for t in iter_tasks([task, {"x": task}])] == [True]
