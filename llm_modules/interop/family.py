"""What a Hugging Face family provides: what it can represent (``FIELDS``), its config.json mapping in
both directions, and its checkpoint layout as a weight table (``weights.WeightTable``).

Families work on plain data: a ModelConfig, the name of an LM kind ("CausalLM") and state dicts.
They never build or import a LightningModule, so interop sits below ``models`` (``llm_modules.hf``
puts the two together).
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar, Mapping

from llm_modules.config import ModelConfig
from llm_modules.interop.allow import Rule, field_problems
from llm_modules.interop.weights import StateDict, WeightTable
from llm_modules.registry import Registry

HF_FAMILIES = Registry("hf_family", "Hugging Face model families for from_hf / to_hf")


def kinds_of(model: Any) -> tuple[str, ...]:
    """The LM kinds a module, a module class or a kind name is, most specific first, found without
    importing ``models``: the module's own ``kind`` (a DPO module is its policy's kind), then the
    names of its classes (a PPO policy is a CausalLM)."""
    if isinstance(model, str):
        return (model,)
    cls = model if isinstance(model, type) else type(model)
    names = tuple(c.__name__ for c in cls.__mro__)
    declared = None if isinstance(model, type) else getattr(model, "kind", None)
    return (declared, *names) if isinstance(declared, str) and declared not in names else names


class HFFamily(abc.ABC):
    """One Hugging Face model family. Subclasses register with ``@HF_FAMILIES.register(model_type)``."""

    #: the ``model_type`` of config.json, under which the family registers
    model_type: ClassVar[str]
    #: the LM kind this family loads into and exports from (a name in ``models.KINDS``)
    kind: ClassVar[str]
    #: what that kind is, in words, for the refusal of another kind
    kind_words: ClassVar[str]
    #: whether models of this family generate (an exported folder then gets generation_config.json)
    generates: ClassVar[bool] = True
    #: one rule per ModelConfig field (``allow``): what the family can represent
    fields: ClassVar[Mapping[str, Rule]]

    @abc.abstractmethod
    def config_from_hf(self, hf: dict[str, Any]) -> ModelConfig:
        """ModelConfig equivalent to an HF config.json dict; a value it cannot represent is a ConfigError."""

    def refine_config(self, config: ModelConfig, weights: StateDict) -> ModelConfig:
        """The config corrected by what only the checkpoint's tensors tell; unchanged by default.

        Transformers 5 decides some structure from the weights rather than config.json: it ties a
        head to the embedding unless the checkpoint holds a different head tensor (T5, BERT).
        """
        return config

    @abc.abstractmethod
    def config_to_hf(self, config: ModelConfig) -> dict[str, Any]:
        """HF config.json dict (with model_type and architectures) of a config ``mismatches`` accepts."""

    @abc.abstractmethod
    def weight_table(self, config: ModelConfig) -> WeightTable:
        """The checkpoint layout of a model with this config."""

    @property
    def name(self) -> str:
        return self.model_type

    def mismatches(self, config: ModelConfig, model: Any) -> list[str]:
        """Why this family cannot represent the model exactly (empty list: it can). ``model``: the
        module, its class or its kind's name."""
        kinds = kinds_of(model)
        problems = []
        if self.kind not in kinds:
            problems.append(f"{kinds[0]} is not {self.kind_words} (the {self.name} family is a {self.kind})")
        return problems + field_problems(config, self.fields, self.name)

    def weights_from_hf(self, weights: StateDict, config: ModelConfig) -> StateDict:
        """HF tensors -> the state dict of our torch model (``module.model``), strictly."""
        return self.weight_table(config).from_hf(weights)

    def weights_to_hf(self, state: StateDict, config: ModelConfig) -> StateDict:
        """Our state dict -> HF tensor names (tied weights stored once), strictly."""
        return self.weight_table(config).to_hf(state)
