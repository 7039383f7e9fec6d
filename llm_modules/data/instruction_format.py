"""Instruction records -> text segments: the two record formats and the prompt templates.

A record is detected per record (one file may mix them):

- **instruction** (Alpaca style): ``{"instruction": str, "input": str (optional, may be empty),
  "output": str}``. The prompt is ``template.prompt`` filled with ``{instruction}`` and ``{input}``,
  or ``template.prompt_no_input`` when the input is missing or empty; the response is ``output``.
- **chat**: ``{"messages": [{"role": "system" | "user" | "assistant", "content": str}, ...]}``. The
  response is the LAST assistant message; the prompt is every message before it, each rendered with
  its role's template, followed by the assistant template's text before ``{content}`` (so the prompt
  ends where the reply begins). Messages after the last assistant reply would be a question nobody
  answers, so they are refused rather than silently dropped. With ``train_on="all_assistant"`` the
  earlier assistant turns are trained on as well: their content and the assistant template's text
  after ``{content}`` (the turn's end marker, which the model must learn to write), never the
  role markers.

A formatted record is a list of segments ``(text, scored)``; the last one is the response. The
segments are tokenized one by one, so the loss mask falls exactly on the response tokens however the
tokenizer would merge text across a boundary.

Templates are plain ``str.format`` strings, so a config can hold them (``{{`` writes a brace). A
few are built in and selectable by name (``BUILTIN_TEMPLATES``); a mapping gives a custom one, its
missing keys taken from ``base`` (default ``plain``). ``from_checkpoint`` (``FROM_CHECKPOINT``)
formats with the model's own Jinja chat template instead (``chat_template``); records are then
conversations (``messages_of``: an instruction record is one user turn and its reply).
"""

from __future__ import annotations

import difflib
import string
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from llm_modules.registry import ConfigError

ROLES = ("system", "user", "assistant")
#: ``data.template`` value: the model's own chat template (``llm_modules.data.chat_template``)
FROM_CHECKPOINT = "from_checkpoint"
TRAIN_ON = ("last", "all_assistant")
Segment = tuple[str, bool]  # (text, trained on)

#: the placeholders each template string may use
PLACEHOLDERS = {
    "prompt": ("instruction", "input"),
    "prompt_no_input": ("instruction",),
    "system": ("content",),
    "user": ("content",),
    "assistant": ("content",),
}


class RecordError(ValueError):
    """A record that cannot be formatted; the data module adds the file and line."""


@dataclass(frozen=True)
class Template:
    """How records become prompts. ``prompt`` / ``prompt_no_input`` format instruction records;
    ``system`` / ``user`` / ``assistant`` format chat turns (``{content}`` is the message)."""

    prompt: str
    prompt_no_input: str
    system: str
    user: str
    assistant: str

    def check(self, field: str = "data.template") -> Template:
        """Refuse unknown placeholders (a typo would otherwise fail on the first record, or not at all)."""
        for name, allowed in PLACEHOLDERS.items():
            for placeholder in _placeholders(getattr(self, name), f"{field}.{name}"):
                if placeholder not in allowed:
                    close = difflib.get_close_matches(placeholder, allowed, n=1)
                    hint = f" (did you mean {{{close[0]}}}?)" if close else ""
                    raise ConfigError(
                        f"{field}.{name}: unknown placeholder {{{placeholder}}}{hint}; it may use "
                        + ", ".join(f"{{{a}}}" for a in allowed) + " (write {{ and }} for literal braces)"
                    )
        if _placeholders(self.assistant, f"{field}.assistant") != ["content"]:
            raise ConfigError(f"{field}.assistant={self.assistant!r} must hold {{content}} exactly once: the reply "
                              "goes there, and the text before it ends the prompt")
        return self

    def assistant_parts(self) -> tuple[str, str]:
        """The assistant template's text before and after ``{content}``."""
        before, after, seen = [], [], False
        for literal, name, _, _ in string.Formatter().parse(self.assistant):
            (after if seen else before).append(literal)
            seen = seen or name is not None
        return "".join(before), "".join(after)


BUILTIN_TEMPLATES: dict[str, Template] = {
    # Stanford Alpaca's prompts; chat turns in the same "### " sections.
    "alpaca": Template(
        prompt="Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n",
        prompt_no_input="Below is an instruction that describes a task. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\n{instruction}\n\n### Response:\n",
        system="{content}\n\n",
        user="### Instruction:\n{content}\n\n",
        assistant="### Response:\n{content}\n\n",
    ),
    # The fewest tokens: one line per part; for tiny models and tests.
    "plain": Template(
        prompt="{instruction}\n{input}\n",
        prompt_no_input="{instruction}\n",
        system="{content}\n",
        user="{content}\n",
        assistant="{content}\n",
    ),
    # ChatML's turn markers as plain text (the tokenizer spells them out; no special tokens needed).
    "chatml": Template(
        prompt="<|im_start|>user\n{instruction}\n\n{input}<|im_end|>\n<|im_start|>assistant\n",
        prompt_no_input="<|im_start|>user\n{instruction}<|im_end|>\n<|im_start|>assistant\n",
        system="<|im_start|>system\n{content}<|im_end|>\n",
        user="<|im_start|>user\n{content}<|im_end|>\n",
        assistant="<|im_start|>assistant\n{content}<|im_end|>\n",
    ),
}


def resolve_template(value: str | Mapping[str, str], field: str = "data.template") -> Template | str:
    """A built-in template by name, or a mapping of template strings over ``base`` (default ``plain``);
    ``from_checkpoint`` is returned as it is (the model's template is known once the tokenizer is)."""
    if value == FROM_CHECKPOINT:
        return FROM_CHECKPOINT
    if isinstance(value, str):
        return _builtin(value, field)
    if not isinstance(value, Mapping):
        raise ConfigError(f"{field}: give a template name ({', '.join(BUILTIN_TEMPLATES)}) or a mapping of "
                          f"template strings; got {type(value).__name__}")
    keys = [f.name for f in fields(Template)]
    overrides = dict(value)
    base = _builtin(overrides.pop("base", "plain"), f"{field}.base")
    for key, text in overrides.items():
        if key not in keys:
            close = difflib.get_close_matches(str(key), keys, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{field}: unknown key {key!r}{hint}; keys: base, {', '.join(keys)}")
        if not isinstance(text, str):
            raise ConfigError(f"{field}.{key}: must be a string; got {type(text).__name__}")
    return replace(base, **overrides).check(field)


def format_record(record: dict[str, Any], template: Template, train_on: str = "last") -> list[Segment]:
    """The record's segments ``(text, scored)``; the last is the response (module docstring).

    Raises RecordError naming the field at fault.
    """
    if "messages" in record:
        return _chat(record["messages"], template, train_on)
    if "instruction" in record or "output" in record:
        return _instruction(record, template)
    raise RecordError(f"has neither 'instruction'/'output' (an instruction record) nor 'messages' (a chat); "
                      f"its keys: {sorted(record)}")


def _instruction(record: dict[str, Any], template: Template) -> list[Segment]:
    instruction, output = _string(record, "instruction"), _string(record, "output")
    given = record.get("input")
    if given is not None and not isinstance(given, str):
        raise RecordError(f"field 'input' must be a string (or empty, or absent); got {type(given).__name__}")
    if given:
        prompt = template.prompt.format(instruction=instruction, input=given)
    else:
        prompt = template.prompt_no_input.format(instruction=instruction)
    return [(prompt, False), (output, True)]


def messages_of(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The record as a conversation that ends with the reply to train on: its ``messages``, or an
    instruction record as one user turn (the instruction, then the input after a blank line) and the
    assistant's ``output``. Raises RecordError naming the field at fault."""
    if "messages" in record:
        _check_messages(record["messages"])
        return record["messages"]
    if "instruction" in record or "output" in record:
        instruction, output = _string(record, "instruction"), _string(record, "output")
        given = record.get("input")
        if given is not None and not isinstance(given, str):
            raise RecordError(f"field 'input' must be a string (or empty, or absent); got {type(given).__name__}")
        user = instruction + (f"\n\n{given}" if given else "")
        return [{"role": "user", "content": user}, {"role": "assistant", "content": output}]
    raise RecordError(f"has neither 'instruction'/'output' (an instruction record) nor 'messages' (a chat); "
                      f"its keys: {sorted(record)}")


def _chat(messages: Any, template: Template, train_on: str) -> list[Segment]:
    last = _check_messages(messages)
    before, after = template.assistant_parts()
    segments: list[Segment] = []
    text = ""
    for message in messages[:last]:
        role, content = message["role"], message["content"]
        if role == "assistant" and train_on == "all_assistant":
            segments += [(text + before, False), (content + after, True)]
            text = ""
        else:
            text += getattr(template, role).format(content=content)
    return segments + [(text + before, False), (messages[last]["content"], True)]


def _check_messages(messages: Any) -> int:
    """Refuse a malformed conversation (RecordError naming the field); the index of its last reply."""
    if not isinstance(messages, list) or not messages:
        raise RecordError("field 'messages' must be a non-empty list of {role, content} objects")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise RecordError(f"field 'messages[{i}]' must be an object with 'role' and 'content'")
        role = message.get("role")
        if role not in ROLES:
            raise RecordError(f"field 'messages[{i}].role' is {role!r}; it must be one of {', '.join(ROLES)}")
        if not isinstance(message.get("content"), str):
            raise RecordError(f"field 'messages[{i}].content' is missing or not a string")
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
    if last is None:
        raise RecordError("field 'messages' has no assistant message; the response is the last assistant message")
    if last != len(messages) - 1:
        raise RecordError(f"field 'messages[{last + 1}]' ({messages[last + 1]['role']}) comes after the last "
                          "assistant reply, which is the response; end the conversation with the reply to train on")
    return last


def _string(record: dict[str, Any], field: str) -> str:
    value = record.get(field)
    if value is None:
        raise RecordError(f"field {field!r} is missing; an instruction record needs 'instruction' and 'output' "
                          "(and optionally 'input'), a chat record 'messages'")
    if not isinstance(value, str):
        raise RecordError(f"field {field!r} must be a string; got {type(value).__name__}")
    return value


def _builtin(name: Any, field: str) -> Template:
    if name not in BUILTIN_TEMPLATES:
        close = difflib.get_close_matches(str(name), BUILTIN_TEMPLATES, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"{field}: unknown template {name!r}{hint}; built-in: {', '.join(BUILTIN_TEMPLATES)}, "
                          "or give a mapping of template strings")
    return BUILTIN_TEMPLATES[name]


def _placeholders(text: str, field: str) -> list[str]:
    try:
        return [name for _, name, _, _ in string.Formatter().parse(text) if name is not None]
    except ValueError as err:  # a lone brace
        raise ConfigError(f"{field}={text!r} is not a valid template ({err}); write {{{{ and }}}} for literal "
                          "braces") from None
