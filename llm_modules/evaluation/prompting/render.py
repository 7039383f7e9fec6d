"""Writing the prompt when a ``PromptDesign`` sets templates, a separator or few-shot rationales.

Plain text only, laid out as lm-eval lays out its own: the description, then each demonstration
followed by the separator, then the question (with the task's ``gen_prefix``). A demonstration is
``demo_template`` rendered over the document's fields plus ``text`` (the task's question text),
``target`` (the answer; with few-shot chain-of-thought ``rationale_template``: the rationale and the
answer) and ``rationale``; without a template it is ``text``, the task's target delimiter, ``target``.
"""

from __future__ import annotations

import re

from lm_eval.api.utils import maybe_delimit, requires_delimiter
from lm_eval.utils import apply_template

from llm_modules.evaluation.prompting.design import PromptDesign
from llm_modules.registry import ConfigError, did_you_mean

_PLACEHOLDER = re.compile(r"\{\{.*?\}\}", re.S)


def question_template(design: PromptDesign) -> str | None:
    """The explicit question template, or the demonstration template up to its last placeholder
    (``"Q: {{question}}\\nA: {{target}}"`` -> ``"Q: {{question}}\\nA:"``)."""
    if design.question_template is not None or design.demo_template is None:
        return design.question_template
    found = list(_PLACEHOLDER.finditer(design.demo_template))
    if len(found) < 2:
        raise ConfigError(f"question_template: give one; demo_template {design.demo_template!r} has "
                          f"{len(found)} placeholder(s), so no question can be cut from it before the answer")
    return design.demo_template[:found[-1].start()].rstrip(" \t")


def _render(field: str, template: str, values: dict, task_name: str) -> str:
    import jinja2

    try:
        return apply_template(template, values)
    except jinja2.exceptions.UndefinedError as err:
        name = re.search(r"'(\w+)' is undefined", str(err))
        hint = did_you_mean(name.group(1), values) if name else ""
        raise ConfigError(f"{field}: {err}{hint} in task {task_name}; variables: {', '.join(sorted(values))}") from None
    except jinja2.exceptions.TemplateError as err:
        raise ConfigError(f"{field}: {err} in task {task_name}") from None


def answer_text(task, doc: dict) -> str:
    """A demonstration's answer as lm-eval writes it (a choice index resolved, the first of several targets)."""
    cfg = task.fewshot_cfg
    target = task.doc_to_target(doc, cfg.doc_to_target)
    choices = task.doc_to_choice(doc, cfg.doc_to_choice) if cfg.doc_to_choice else None
    if choices and isinstance(target, int):
        return str(choices[target])
    if isinstance(target, list):
        return str(target[0])
    return str(target)


def demonstration(task, doc: dict, design: PromptDesign, rationales: bool) -> str:
    name = task.config.task
    text = task.doc_to_text(doc, task.fewshot_cfg.doc_to_text)
    values = {**doc, "text": text, "target": answer_text(task, doc)}
    if rationales:
        if design.rationale_field not in doc:
            raise ConfigError(f"rationale_field: {design.rationale_field!r} is no field of the few-shot documents "
                              f"of {name}{did_you_mean(design.rationale_field, doc)}; fields: {', '.join(doc)}")
        values["rationale"] = doc[design.rationale_field]
        values["target"] = _render("rationale_template", design.rationale_template, values, name)
    if design.demo_template is not None:
        return _render("demo_template", design.demo_template, values, name)
    return f"{text}{_either(task.fewshot_cfg.target_delimiter, task.config.target_delimiter)}{values['target']}"


def question(task, doc: dict, design: PromptDesign, gen_prefix: str | None) -> str:
    text = task.doc_to_text(doc)
    template = question_template(design)
    if template is not None:
        text = _render("question_template", template, {**doc, "text": text}, task.config.task)
    if gen_prefix:
        text += (task.config.target_delimiter if requires_delimiter(text, gen_prefix) else "") + gen_prefix
    return text


def context(task, doc: dict, demos: list[dict], design: PromptDesign, rationales: bool,
            system_instruction: str | None = None, gen_prefix: str | None = None) -> str:
    """The whole prompt: description, demonstrations each followed by the separator, the question."""
    if task.multiple_input:
        raise ConfigError(f"demo_template: task {task.config.task} puts each choice in its own context "
                          "(multiple inputs); demonstration templates and rationales need one question")
    description = task.resolve_field(doc, task.config.description) or ""
    prefix = maybe_delimit(system_instruction, description, task.config.fewshot_delimiter)
    separator = _either(design.separator, task.fewshot_cfg.fewshot_delimiter, task.config.fewshot_delimiter)
    body = "".join(demonstration(task, d, design, rationales) + separator for d in demos)
    return prefix + body + question(task, doc, design, gen_prefix)


def _either(*values: str | None) -> str:
    """The first value that is set (an empty string is set)."""
    return next(v for v in values if v is not None)
