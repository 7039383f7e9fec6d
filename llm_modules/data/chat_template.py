"""A checkpoint's chat template (Jinja, from its ``tokenizer_config.json``) as training segments.

``template: from_checkpoint`` in the instruction data module formats every record with the model's
own chat template, so fine-tuning sees exactly the text transformers' ``apply_chat_template`` (and
so every chat front end) gives the model. The template is untrusted text from a downloaded folder:
it renders in Jinja's ``ImmutableSandboxedEnvironment`` (no attribute access to Python internals,
no mutation of the values passed in), with what transformers offers templates: ``raise_exception``,
``strftime_now``, the ``tojson`` filter, loop controls, and ``{% generation %}`` blocks (rendered as
their content: they only mark assistant text for transformers).

Where the loss falls: the conversation is rendered whole, and for each assistant turn trained on,
also up to the turn with the generation prompt (``add_generation_prompt=True``: the text before the
reply) and through the turn. The reply is what the second adds to the first: its content and the
template's end of turn (``<|eot_id|>``), which the model must learn to write; role headers are
never trained on. A template that renders an earlier part of a conversation differently once it
goes on (so the parts are not prefixes of the whole) is refused with the turn it happens at.
"""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache
from typing import Any

from llm_modules.registry import ConfigError

Segment = tuple[str, bool]  # (text, trained on), as instruction_format's


class TemplateRecordError(ValueError):
    """A record the template cannot render; the data module adds the file and line."""


class ChatTemplate:
    """A compiled chat template and the special tokens it is rendered with (``bos_token`` ...)."""

    def __init__(self, source: str, special_tokens: dict[str, str] | None = None, field: str = "data.template"):
        self.source = source
        self.special_tokens = dict(special_tokens or {})
        self.template = _compile(source, field)

    @classmethod
    def of(cls, tokenizer: Any, field: str = "data.template") -> ChatTemplate:
        """The chat template of ``tokenizer`` (the model's); one line saying why when it has none."""
        source = getattr(tokenizer, "chat_template", None)
        if not source:
            where = getattr(tokenizer, "source", None) or "the model's tokenizer"
            raise ConfigError(
                f"{field}: from_checkpoint needs the model's chat template, and {where} has none (a Hugging Face "
                "folder keeps it in tokenizer_config.json as chat_template, or in chat_template.jinja); start from "
                "an instruct model's folder, or name a built-in template (alpaca, plain, chatml)")
        return cls(source, getattr(tokenizer, "special_tokens", None), field)

    def render(self, messages: list[dict[str, Any]], add_generation_prompt: bool = False) -> str:
        try:
            return self.template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                        **self.special_tokens)
        except TemplateRecordError:
            raise
        except Exception as err:  # jinja2's TemplateError, SecurityError, or an error inside the template
            raise TemplateRecordError(f"the chat template failed on it ({type(err).__name__}: {err})") from None

    def segments(self, messages: list[dict[str, Any]], train_on: str = "last") -> list[Segment]:
        """The conversation as segments ``(text, trained)``; the last is the final reply (module docstring)."""
        replies = [i for i, m in enumerate(messages) if m.get("role") == "assistant"]
        chosen = replies if train_on == "all_assistant" else replies[-1:]
        whole = self.render(messages)
        out: list[Segment] = []
        done = 0
        for i in chosen:
            before = self.render(messages[:i], add_generation_prompt=True)
            through = whole if i == len(messages) - 1 else self.render(messages[: i + 1])
            if not (whole.startswith(through) and through.startswith(before) and len(before) >= done):
                raise TemplateRecordError(
                    f"the chat template renders the conversation up to messages[{i}] differently from its start "
                    "in the whole conversation, so the reply's tokens cannot be told apart; train on the last "
                    "reply only (data.train_on: last) or use a built-in template")
            out += [(whole[done:len(before)], False), (whole[len(before):len(through)], True)]
            done = len(through)
        reply, _ = out.pop()
        return out + [(reply + whole[done:], True)]


@lru_cache(maxsize=8)
def _compile(source: str, field: str):
    try:
        import jinja2
        from jinja2 import nodes
        from jinja2.ext import Extension, loopcontrols
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:
        raise ConfigError(f"{field}: from_checkpoint renders the model's chat template with jinja2 "
                          "(pip install 'llm-modules[hf]')") from None

    class Generation(Extension):
        """``{% generation %}...{% endgeneration %}``: transformers' marker of assistant text; its content."""

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.Scope(body, lineno=lineno)

    def raise_exception(message):
        raise TemplateRecordError(f"the chat template refuses it: {message}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[Generation, loopcontrols])
    env.filters["tojson"] = lambda value, indent=None, **_: json.dumps(value, indent=indent, ensure_ascii=False)
    env.globals.update(raise_exception=raise_exception, strftime_now=lambda fmt: datetime.now().strftime(fmt))
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as err:
        raise ConfigError(f"{field}: the model's chat template is not valid Jinja (line {err.lineno}: "
                          f"{err.message}); fix chat_template in its tokenizer_config.json or name a built-in "
                          "template") from None
