"""What a Hugging Face family provides: config and weight mappings in both directions."""

from __future__ import annotations

import abc
from typing import Any

import torch

from llm_modules.config import ModelConfig
from llm_modules.models import LanguageModel
from llm_modules.registry import Registry

HF_FAMILIES = Registry("hf_family", "Hugging Face model families for from_hf / to_hf")

StateDict = dict[str, torch.Tensor]


class HFFamily(abc.ABC):
    """One Hugging Face model family. Subclasses register with ``@HF_FAMILIES.register(model_type)``."""

    #: the LightningModule class this family loads into
    kind: type[LanguageModel]

    @abc.abstractmethod
    def config_from_hf(self, hf: dict[str, Any]) -> ModelConfig:
        """ModelConfig equivalent to an HF config.json dict."""

    def refine_config(self, config: ModelConfig, weights: StateDict) -> ModelConfig:
        """The config corrected by what only the checkpoint's tensors tell; unchanged by default.

        Transformers 5 decides some structure from the weights rather than config.json: it ties a
        head to the embedding unless the checkpoint holds a different head tensor (T5, BERT).
        """
        return config

    @abc.abstractmethod
    def weights_from_hf(self, weights: StateDict, config: ModelConfig) -> StateDict:
        """HF tensors -> the state dict of our torch model (``module.model``)."""

    @abc.abstractmethod
    def mismatches(self, config: ModelConfig, kind: type[LanguageModel]) -> list[str]:
        """Why this family cannot represent the model exactly (empty list: it can)."""

    @abc.abstractmethod
    def config_to_hf(self, config: ModelConfig) -> dict[str, Any]:
        """HF config.json dict (with model_type and architectures)."""

    @abc.abstractmethod
    def weights_to_hf(self, state: StateDict, config: ModelConfig) -> StateDict:
        """Our state dict -> HF tensor names (tied weights stored once)."""


def spec_name(value: Any) -> str:
    """The component name of a config slot value."""
    return value if isinstance(value, str) else str(value.get("name"))


def spec_options(value: Any) -> dict[str, Any]:
    return {} if isinstance(value, str) else {k: v for k, v in value.items() if k != "name"}
