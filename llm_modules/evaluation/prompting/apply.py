"""``apply_design(task_dict, design, embed=None)``: a ``PromptDesign`` put onto lm-eval task objects.

Works on whatever lm-eval built (``get_task_dict``'s nested dict, ``TaskManager.load``'s
``{"tasks": ...}``, a list, a single task), before evaluation, changing each task in place:

- its ``sampler`` becomes a ``DesignSampler`` (selection and order) over the task's few-shot pool;
- its ``fewshot_context`` (on the instance) first tells the sampler which document is evaluated,
  then writes the prompt (lm-eval's own layout, or ``render.context`` when the design sets
  templates, a separator or rationales), then adds the zero-shot trigger;
- generative tasks get answer extraction and self-consistency (``chain_of_thought``).

Applying a second design replaces the first: each task is first put back as lm-eval built it.
The design is recorded in each task's ``metadata`` so that it is written with the results.
"""

from __future__ import annotations

import importlib
import logging

from llm_modules.evaluation.prompting.design import PromptDesign
from llm_modules.registry import ConfigError

EVAL_EXTRA = "install the eval extra: pip install 'llm-modules[eval]'"


def apply_design(task_dict, design: PromptDesign | None, embed=None):
    """Apply ``design`` to every task in ``task_dict`` (returned, changed in place). ``embed``:
    ``embed(texts) -> Tensor (N, D)``, needed when the design measures similarity by embeddings
    (``model_embedder(lm)`` gives one for an llm-modules model)."""
    if design is None:
        return task_dict
    try:
        importlib.import_module("lm_eval.api.task")
    except ImportError:
        raise ConfigError(EVAL_EXTRA) from None
    if not isinstance(design, PromptDesign):
        raise ConfigError(f"design: expected a PromptDesign, got {type(design).__name__}")
    tasks = list(iter_tasks(task_dict))
    if design.needs_embeddings and embed is None:
        field = "demonstrations" if design.strategy == "embedding" else "similarity"
        raise ConfigError(f"{field}: 'embedding' needs the model's embeddings: pass embed=model_embedder(lm), "
                          "or use bm25")
    generative = {id(t) for t in tasks if getattr(t, "OUTPUT_TYPE", None) == "generate_until"}
    if design.generative and tasks and not generative:
        field = "cot" if design.cot else "answer_pattern" if design.answer_pattern else "self_consistency"
        names = ", ".join(sorted(str(t.config.task) for t in tasks))
        raise ConfigError(f"{field}: chain-of-thought, answer_pattern and self_consistency score generated answers, "
                          f"but no task here generates ({names} score by log-likelihood); drop --{field}")
    if design.generative:
        for task in tasks:
            if id(task) not in generative:
                logging.getLogger(__name__).warning(
                    "%s scores by log-likelihood: chain-of-thought, answer_pattern and self_consistency left out for it",
                    task.config.task)
    for task in tasks:
        _apply(task, design, embed, id(task) in generative)
    return task_dict


def iter_tasks(obj):
    """Every lm-eval ``Task`` inside ``obj`` (nested dicts, lists, groups), each once."""
    from lm_eval.api.task import Task

    seen: set[int] = set()

    def walk(node):
        if isinstance(node, Task):
            if id(node) not in seen:
                seen.add(id(node))
                yield node
        elif isinstance(node, dict):
            for value in node.values():
                yield from walk(value)
        elif isinstance(node, (list, tuple, set)) or _is_group(node):
            for item in node:
                yield from walk(item)

    yield from walk(obj)


def _is_group(node) -> bool:
    try:
        from lm_eval.api.group import Group
    except ImportError:  # older lm-eval: groups are dict keys
        return False
    return isinstance(node, Group)


def _apply(task, design: PromptDesign, embed, generative: bool) -> None:
    from llm_modules.evaluation.prompting import render
    from llm_modules.evaluation.prompting.chain_of_thought import apply_chain_of_thought
    from llm_modules.evaluation.prompting.sampler import DesignSampler

    original = _restore(task)
    name = str(task.config.task)
    if design.selects and hasattr(task, "sampler"):
        task.sampler = DesignSampler(
            list(task.sampler.fewshot_docs()), design, text_of=lambda doc: _text(task, doc),
            pool_text_of=lambda doc: _text(task, doc, task.fewshot_cfg.doc_to_text), embed=embed, task_name=name)
    rationales = design.cot == "fewshot" and generative
    renders = rationales or design.demo_template is not None or design.question_template is not None \
        or design.separator is not None
    trigger = design.cot_trigger if design.cot == "zeroshot" and generative else None

    def fewshot_context(doc, num_fewshot, system_instruction=None, apply_chat_template=False,
                        fewshot_as_multiturn=False, chat_template=None, gen_prefix=None, **more):
        """lm-eval's ``fewshot_context`` with the design's selection, layout and trigger."""
        if isinstance(task.sampler if hasattr(task, "sampler") else None, DesignSampler):
            task.sampler.current = doc
        if renders:
            if apply_chat_template:
                raise ConfigError("demo_template: demonstration templates, separators and rationales write plain "
                                  "text; drop --apply_chat_template or these settings")
            if num_fewshot > 0 and not hasattr(task, "sampler"):
                raise ConfigError(f"num_fewshot: task {name} has no few-shot documents; use --num_fewshot 0")
            demos = task.sampler.sample(num_fewshot, eval_doc=doc) if num_fewshot > 0 else []
            ctx = render.context(task, doc, list(demos), design, rationales, system_instruction, gen_prefix)
        else:
            ctx = original(doc, num_fewshot=num_fewshot, system_instruction=system_instruction,
                           apply_chat_template=apply_chat_template, fewshot_as_multiturn=fewshot_as_multiturn,
                           chat_template=chat_template, gen_prefix=gen_prefix, **more)
        if trigger is not None and isinstance(ctx, str):
            from lm_eval.api.utils import maybe_delimit

            ctx = maybe_delimit(ctx, trigger, " ")
        return ctx

    task.fewshot_context = fewshot_context
    if generative:
        apply_chain_of_thought(task, design)
    task.config.metadata = {**(task.config.metadata or {}), "prompt_design": design.to_dict()}


def _restore(task):
    """The task as lm-eval built it (a design applied before is undone); returns its own ``fewshot_context``."""
    saved = getattr(task, "_prompting_saved", None)
    if saved is None:
        saved = {"fewshot_context": task.fewshot_context, "sampler": getattr(task, "sampler", None),
                 "filters": task._filters, "filter_list": task.config.filter_list, "repeats": task.config.repeats,
                 "generation_kwargs": task.config.generation_kwargs, "metadata": task.config.metadata}
        task._prompting_saved = saved
    if saved["sampler"] is not None:
        task.sampler = saved["sampler"]
    task._filters = saved["filters"]
    for key in ("filter_list", "repeats", "generation_kwargs", "metadata"):
        setattr(task.config, key, saved[key])
    task.__dict__.pop("fewshot_context", None)
    return saved["fewshot_context"]


def _text(task, doc: dict, doc_to_text=None) -> str:
    """The text lm-eval renders for ``doc``'s question; for multiple-input tasks (the question is a
    choice index) the choices."""
    text = task.doc_to_text(doc, doc_to_text)
    if isinstance(text, int) and task.config.doc_to_choice is not None:
        return " ".join(map(str, task.doc_to_choice(doc)))
    return str(text)
