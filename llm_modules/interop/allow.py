"""What a Hugging Face family can represent, declared as an allow-list over every ModelConfig field.

Each family holds ``FIELDS``: one rule per ModelConfig field. Export checks every field of the
config against its rule, and a field the family does not list is refused, whatever its value: a
new ModelConfig field therefore stops every export until each family says what it does with it.
There is no implicit "default, inert" case. A field whose default changes nothing for a family is
declared so explicitly, as ``Fixed(<default>)`` (the feature must stay off) or as ``Ignored(why)``
(any value gives the same exported logits: an attention backend, dropout, initialization).

Rules:

- ``Mapped(hf_key)``: the value is written to config.json under ``hf_key`` (any valid value).
- ``Ignored(why)``: any value; the exported model computes the same logits whatever it is.
- ``Fixed(value)``: the family has only this value.
- ``Check(predicate, allowed)``: a relation to other fields (``d_ff = 4 * d_model``); ``allowed``
  says in words what the family has.
- ``Slot(names, **options)``: a component slot (norm, position, ...): the component is one of
  ``names`` and each option it is really built with (``common.component``: signature defaults,
  config-wide values and the slot's own options) is listed, as ``ANY`` (mapped) or the one value
  the family has. An option the family does not list (a plugin's, or a new one) is refused.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from llm_modules.config import ModelConfig
from llm_modules.interop.slots import ActivationTable, activation_to_hf, component

#: an option or field value the family maps, whatever it is
ANY = object()


@dataclass(frozen=True)
class Mapped:
    """Written to config.json (``hf_key``, for the reader); any valid value."""

    hf_key: str

    def problems(self, config: ModelConfig, field: str, family: str) -> list[str]:
        return []


@dataclass(frozen=True)
class Ignored:
    """Any value gives the same exported logits (``why`` says why)."""

    why: str

    def problems(self, config: ModelConfig, field: str, family: str) -> list[str]:
        return []


@dataclass(frozen=True)
class Fixed:
    """The one value the family has."""

    value: Any

    def problems(self, config: ModelConfig, field: str, family: str) -> list[str]:
        value = getattr(config, field)
        if value == self.value:
            return []
        return [f"{field}={value!r} (the {family} family has {field}={self.value!r}; set {field}: {yaml_value(self.value)})"]


@dataclass(frozen=True)
class Check:
    """A relation the family needs: ``predicate(config)`` true; otherwise ``message(config)``,
    which names the value, and ``allowed`` says what the family has."""

    predicate: Callable[[ModelConfig], bool]
    allowed: str
    shown: Callable[[ModelConfig, str], str] | None = None

    def problems(self, config: ModelConfig, field: str, family: str) -> list[str]:
        if self.predicate(config):
            return []
        shown = self.shown(config, field) if self.shown else f"{field}={getattr(config, field)!r}"
        return [f"{shown} (the {family} family has {self.allowed})"]


@dataclass(frozen=True)
class Slot:
    """A component slot: one of ``names``, with every effective option listed in ``options``
    (``ANY`` or the one value the family has)."""

    names: tuple[str, ...]
    options: Mapping[str, Any]

    def __init__(self, names: str | tuple[str, ...], **options: Any):
        object.__setattr__(self, "names", (names,) if isinstance(names, str) else tuple(names))
        object.__setattr__(self, "options", dict(options))

    def problems(self, config: ModelConfig, field: str, family: str) -> list[str]:
        name, effective = component(config, field)
        if name not in self.names:
            return [f"{field} {name!r} (the {family} family has {' or '.join(map(repr, self.names))})"]
        found = []
        for key, value in effective.items():
            if key not in self.options:
                found.append(f"{field} {name!r} with {key}={value!r} (the {family} family does not map the option "
                             f"{key!r}; leave it out)")
            elif self.options[key] is not ANY and value != self.options[key]:
                found.append(f"{field} {name!r} with {key}={value!r} (the {family} family has "
                             f"{key}={self.options[key]!r})")
        return found


class Activation(Slot):
    """The activation slot of a family whose HF config names the feed-forward (``hidden_act``):
    the model's activation is one of ``table`` (HF name -> our name and the options it fixes), and
    its other options are listed as in ``Slot``."""

    def __init__(self, table: ActivationTable, **options: Any):
        super().__init__(tuple(dict.fromkeys(ours for ours, _ in table.values())), **options)
        object.__setattr__(self, "table", table)

    def problems(self, config: ModelConfig, field: str, family: str) -> list[str]:
        name, effective = component(config, field)
        if activation_to_hf(config, self.table) is None:
            shown = f"{name!r}" + (f" with approximate={effective['approximate']!r}" if "approximate" in effective else "")
            return [f"activation {shown} (the {family} family has {', '.join(self.names)})"]
        fixed = {key for _, options in self.table.values() for key in options}
        listed = Slot(name, **{key: ANY for key in fixed}, **self.options)
        return listed.problems(config, field, family)


Rule = Mapped | Ignored | Fixed | Check | Slot


def yaml_value(value: Any) -> str:
    """A value as a YAML config spells it (``true``, ``null``, ``1.0``), for the fix in a message."""
    return json.dumps(value) if value is None or isinstance(value, (bool, int, float)) else repr(value)


def describe(rule: Rule) -> str:
    """A rule in words, for the docs page that prints each family's allow-list."""
    if isinstance(rule, Mapped):
        return f"mapped (config.json {rule.hf_key})"
    if isinstance(rule, Ignored):
        return f"any value: {rule.why}"
    if isinstance(rule, Fixed):
        return f"must be {yaml_value(rule.value)}"
    if isinstance(rule, Check):
        return rule.allowed
    options = ", ".join(f"{k}={'any' if v is ANY else yaml_value(v)}" for k, v in rule.options.items())
    return " or ".join(rule.names) + (f" ({options})" if options else "")


def field_problems(config: ModelConfig, fields: Mapping[str, Rule], family: str) -> list[str]:
    """Every reason ``config`` is outside the family's allow-list, field by field, in the
    dataclass's order; a field with no rule is refused (see the module docstring)."""
    found = []
    for f in dataclasses.fields(config):
        rule = fields.get(f.name)
        if rule is None:
            found.append(
                f"{f.name}={getattr(config, f.name)!r} (a field the {family} family does not declare: map it, "
                f"or declare the value it must have, in the family's FIELDS)"
            )
        else:
            found += rule.problems(config, f.name, family)
    return found
