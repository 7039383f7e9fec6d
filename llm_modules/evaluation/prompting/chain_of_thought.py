"""Chain-of-thought scoring settings for a generative lm-eval task: answer extraction by pattern and
self-consistency, expressed with lm-eval's own filters (``regex``, ``majority_vote``, ``take_first``)
and its ``repeats``, so that its metrics (exact match, ...) are computed on the extracted answer.

With ``self_consistency`` k > 1 each document is generated k times by sampling and two results are
reported: ``maj@k`` (the majority of the k extracted answers) and ``first`` (the first sample's
answer alone), as lm-eval's own self-consistency tasks do.
"""

from __future__ import annotations

from llm_modules.evaluation.prompting.design import PromptDesign


def filter_list(design: PromptDesign) -> list[dict] | None:
    """lm-eval ``filter_list`` entries for the design, or None where the task's own filters stay."""
    extract = ([{"function": "regex", "regex_pattern": design.pattern, "group_select": -1}]
               if design.pattern is not None else [])
    if design.self_consistency > 1:
        return [
            {"name": f"maj@{design.self_consistency}",
             "filter": [*extract, {"function": "majority_vote"}, {"function": "take_first"}]},
            {"name": "first", "filter": [*extract, {"function": "take_first"}]},
        ]
    if extract:
        return [{"name": "extract", "filter": [*extract, {"function": "take_first"}]}]
    return None


def set_filters(task, entries: list[dict]) -> None:
    """Give ``task`` these filters, built exactly as lm-eval builds a task config's ``filter_list``."""
    from lm_eval.filters import build_filter_ensemble

    task.config.filter_list = entries
    task._filters = [
        build_filter_ensemble(entry["name"], [[f["function"], {k: v for k, v in f.items() if k != "function"}]
                                              for f in entry["filter"]])
        for entry in entries
    ]


def apply_chain_of_thought(task, design: PromptDesign) -> None:
    """Answer extraction, and k sampled generations per document for self-consistency."""
    entries = filter_list(design)
    if entries is not None:
        set_filters(task, entries)
    if design.self_consistency > 1:
        task.config.repeats = design.self_consistency
        kwargs = dict(task.config.generation_kwargs or {})
        kwargs.update(do_sample=True, temperature=design.sampling_temperature)
        task.config.generation_kwargs = kwargs
