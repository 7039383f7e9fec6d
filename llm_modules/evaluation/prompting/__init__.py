"""Demonstration design and chain-of-thought for any lm-eval task (issue 23).

The recipe's in-context learning choices, applied to the task objects lm-eval builds (``TaskManager``
/ ``get_task_dict``) before they are evaluated, so they work for our bundled tasks and the user's own:

- which k demonstrations each evaluated document gets (``random`` with a seed, k nearest by ``bm25``
  or by the model's own ``embedding``, or diverse by ``mmr``), and in what order (most similar last,
  or shuffled with a seed);
- how they are written (jinja templates for a demonstration and for the question, the separator);
- chain-of-thought: rationales in the demonstrations or a zero-shot trigger, the answer extracted by a
  pattern, and self-consistency (a majority vote over k sampled answers).

``PromptDesign`` holds the settings as plain data; ``add_arguments``/``design_from_args`` are its
command-line flags; ``apply_design(task_dict, design, embed=None)`` changes the tasks in place and
``model_embedder(lm)`` is the ``embed`` callable for an llm-modules model; ``task_preparer(design,
lm)`` is both together as ``llm-modules evaluate``'s ``prepare_tasks`` hook. Only ``apply_design``
needs lm-eval (the ``eval`` extra); the rest imports without it.
"""

from llm_modules.evaluation.prompting.cli_args import add_arguments, design_from_args
from llm_modules.evaluation.prompting.design import PromptDesign


def apply_design(task_dict, design, embed=None):
    """See ``llm_modules.evaluation.prompting.apply.apply_design`` (imported here on use: it needs lm-eval)."""
    from llm_modules.evaluation.prompting.apply import apply_design as apply

    return apply(task_dict, design, embed=embed)


def model_embedder(model, **options):
    """See ``llm_modules.evaluation.prompting.embedding.model_embedder``."""
    from llm_modules.evaluation.prompting.embedding import model_embedder as build

    return build(model, **options)


def task_preparer(design, model=None):
    """The ``prepare_tasks(task_dict)`` hook of ``llm-modules evaluate`` for ``design`` (None: tasks
    unchanged): embeddings, when the design measures with them, come from ``model`` (an
    ``LLMModulesLM`` or an llm-modules model), embedded only then."""

    def prepare_tasks(task_dict):
        embed = model_embedder(model) if design is not None and design.needs_embeddings and model is not None else None
        return apply_design(task_dict, design, embed=embed)

    return prepare_tasks


__all__ = ["PromptDesign", "add_arguments", "apply_design", "design_from_args", "model_embedder", "task_preparer"]
