"""Shared by the prompting tests: a tiny local lm-eval task (YAML + JSONL written into a folder) and a
fake lm-eval model that answers generation requests from a script and records the prompts."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

TRAIN = [
    {"question": "the cat sat on the mat", "answer": "mat", "rationale": "Cats like mats."},
    {"question": "a dog barked at the mailman", "answer": "dog", "rationale": "Dogs bark."},
    {"question": "stocks fell sharply on monday", "answer": "stocks", "rationale": "Markets move."},
    {"question": "the cat slept on the warm mat", "answer": "cat", "rationale": "Cats sleep a lot."},
    {"question": "rain fell all day in the city", "answer": "rain", "rationale": "It was wet."},
]
TEST = [
    {"question": "where did the cat sit on the mat", "answer": "9", "rationale": "r"},
    {"question": "what fell on monday", "answer": "4", "rationale": "r"},
]


def write_task(root: Path, name: str = "tiny_qa", *, fewshot_split: str = "train", output_type: str = "generate_until",
               train: list[dict] = TRAIN, test: list[dict] = TEST, extra: str = "") -> Path:
    """A local task over JSONL files (no network): ``{{question}}`` -> ``{{answer}}``, exact match."""
    root.mkdir(parents=True, exist_ok=True)
    for split, docs in (("train", train), ("test", test)):
        (root / f"{name}_{split}.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    body = [f"task: {name}", "dataset_path: json", "dataset_kwargs:", "  data_files:",
            f"    train: {root / (name + '_train.jsonl')}", f"    test: {root / (name + '_test.jsonl')}",
            "training_split: train", "test_split: test", f"fewshot_split: {fewshot_split}",
            f"output_type: {output_type}", 'doc_to_text: "{{question}}"']
    if output_type == "multiple_choice":
        body += ['doc_to_choice: ["mat", "dog", "stocks", "cat", "rain", "9", "4"]', "doc_to_target: answer",
                 "metric_list:", "  - metric: acc", "    aggregation: mean", "    higher_is_better: true"]
    else:
        body += ['doc_to_target: "{{answer}}"', "generation_kwargs:", '  until: ["\\n\\n"]',
                 "metric_list:", "  - metric: exact_match", "    aggregation: mean", "    higher_is_better: true"]
    (root / f"{name}.yaml").write_text("\n".join(body) + "\n" + extra)
    return root


def load_tasks(root: Path, *names: str):
    """lm-eval's task objects for the YAML files in ``root`` (nested dict, as ``get_task_dict`` returns)."""
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(root), include_defaults=False)
    return manager.load_task_or_group(list(names) or ["tiny_qa"])


def contexts(task, num_fewshot: int) -> list[str]:
    """The prompts lm-eval builds for the task's evaluated documents (as ``build_all_requests`` does)."""
    task.set_config(key="num_fewshot", value=num_fewshot)
    return [task.fewshot_context(doc, num_fewshot=num_fewshot, gen_prefix=task.doc_to_prefix(doc))
            for doc in task.eval_docs]


def fake_lm(script):
    """An lm-eval ``LM`` whose generations come from ``script(context, call_index) -> str``; it records
    every (context, gen_kwargs) it is asked."""
    from lm_eval.api.model import LM

    class Scripted(LM):
        def __init__(self):
            super().__init__()
            self.asked: list[tuple[str, dict]] = []
            self.calls: dict[str, int] = defaultdict(int)

        def generate_until(self, requests, disable_tqdm: bool = False):
            out = []
            for context, kwargs in [r.args for r in requests]:
                self.asked.append((context, kwargs))
                out.append(script(context, self.calls[context]))
                self.calls[context] += 1
            return out

        def loglikelihood(self, requests, disable_tqdm: bool = False):
            return [(-float(len(cont)), False) for _, cont in [r.args for r in requests]]

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
            return [-1.0 for _ in requests]

    return Scripted()
