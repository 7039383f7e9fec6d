"""A config slot as the model is really built with it, and the activation tables of the families.

Export must compare what the model computes, not how the config spells it: the model builder
passes ``eps``/``d_ff``/``bias`` from the config's top-level fields, a ``{name: ..., **options}``
slot value overrides them, and the component's signature defaults fill the rest.
"""

from __future__ import annotations

import inspect
from typing import Any

from llm_modules.config import ModelConfig
from llm_modules.nn.feedforward import default_hidden
from llm_modules.registry import REGISTRIES, ConfigError, split_spec

#: an HF activation name -> (our activation name, the options it fixes)
ActivationTable = dict[str, tuple[str, dict[str, Any]]]


def component(config: ModelConfig, slot: str) -> tuple[str, dict[str, Any]]:
    """A slot's name and the options its component is really built with (see the module docstring);
    e.g. ``activation: {name: swiglu, bias: true}`` differs from ``bias: false``."""
    name, options = split_spec(getattr(config, slot), slot)
    factory = REGISTRIES[slot].get(name).factory
    defaults = {
        p.name: p.default
        for p in inspect.signature(factory).parameters.values()
        if p.default is not inspect.Parameter.empty
    }
    provided = {"norm": {"eps": config.norm_eps}, "activation": {"d_ff": config.d_ff, "bias": config.bias}}
    return name, {**defaults, **provided.get(slot, {}), **options}


def ffn_hidden(config: ModelConfig, gated: bool) -> int:
    """The feed-forward hidden size the model is built with (explicit, or the activation's default)."""
    return component(config, "activation")[1].get("d_ff") or default_hidden(config.d_model, gated)


def activation_to_hf(config: ModelConfig, table: ActivationTable) -> str | None:
    """The HF activation name whose ``(our name, options)`` in ``table`` is the model's feed-forward,
    or None. Names are compared by the component they build, so aliases (silu/swish) match."""
    name, options = component(config, "activation")
    factory = REGISTRIES["activation"].get(name).factory
    for hf_name, (ours, fixed) in table.items():
        same = REGISTRIES["activation"].get(ours).factory is factory
        if same and all(options.get(k) == v for k, v in fixed.items()):
            return hf_name
    return None


def activation_from_hf(act: str, table: ActivationTable, family: str, **extra: Any) -> Any:
    """Our activation slot value for an HF activation name; an unknown one is a ConfigError."""
    if act not in table:
        raise ConfigError(f"{family} config.json: activation {act!r} is not supported; supported: {', '.join(table)}")
    name, options = table[act]
    options = {**options, **extra}
    return {"name": name, **options} if options else name
