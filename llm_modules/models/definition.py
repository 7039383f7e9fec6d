"""What an LM object is, whether it trains or not: its config, kind, torch model, fine-tuning state and
tokenizer, and what checkpoints record of them.

Two classes hold it: ``LanguageModel`` (the LightningModule every training command builds) and
``InferenceLM`` (``models.inference_lm``: the same model for generation and file conversion, without
Lightning, whose import alone costs seconds). Both inherit this mixin, so a checkpoint means the same
to either, and neither repeats the other's knowledge. Nothing here imports Lightning.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from llm_modules.checkpoint_contents import KIND_KEY
from llm_modules.config import ModelConfig
from llm_modules.kinds import by_class_name
from llm_modules.models.finetuning import FineTuning, checkpoint_mode
from llm_modules.nn.lm import count_parameters
from llm_modules.registry import ConfigError


def as_config(config: ModelConfig | dict | str) -> ModelConfig:
    """Accept a ModelConfig, its dict form, or the name of a preset (the torch model checks it)."""
    if isinstance(config, str):
        config = ModelConfig.from_preset(config)
    elif not isinstance(config, ModelConfig):
        config = ModelConfig.from_dict(dict(config))
    return config


class ModelDefinition:
    """Mixin of an ``nn.Module`` that holds one LM: ``self.model`` (the torch model of its kind),
    ``self.config``, ``self.finetuning`` (where the weights started, the PEFT method) and the
    tokenizer's bytes. A subclass calls :meth:`_start_finetuning` then :meth:`_build` from its
    constructor and says what ``kind`` it is."""

    #: how to fix an ``init_from`` of another kind (``{kind}``: the checkpoint's), for the message
    base_kind_fix = "set model.class_path: llm_modules.{kind}"
    #: submodules beside ``self.model`` that train with a PEFT method and that adapter-only
    #: checkpoints keep with the method's tensors (a reward model's value head); ``models.finetuning``
    trained_beside_peft: tuple[str, ...] = ()

    def _start_finetuning(self, config, init_from: str | None, peft, peft_checkpoint: str) -> None:
        """The fine-tuning state (``models.finetuning``) and the config it resolves: the one given,
        or ``init_from``'s."""
        self.finetuning = FineTuning(init_from, peft, peft_checkpoint, self.base_kind, self.base_kind_fix)
        self.config = self.finetuning.config(None if config is None else as_config(config))

    def _build(self) -> None:
        """The torch model, with the base weights and the PEFT method of ``self.finetuning``."""
        self.model = self.build_model(self.config)
        self.finetuning.attach(self)
        self.tokens_seen = 0
        self.tokenizer_bytes: bytes | None = self.finetuning.base_tokenizer

    def build_model(self, config: ModelConfig) -> nn.Module:
        """The torch model of this LM kind (``llm_modules.kinds``: the one table of kinds): the kind the
        module is, or else the kind its class derives from (a user's subclass of ``CausalLM``)."""
        lineage = (self.base_kind, *(cls.__name__ for cls in type(self).__mro__))
        known = next((kind for kind in map(by_class_name, lineage) if kind is not None), None)
        if known is None:
            raise ConfigError(f"{type(self).__name__}: kind {self.base_kind!r} is none of the LM kinds; "
                              "override build_model to say which torch model it builds")
        return known.build_torch_model(config)

    # ---- what the model is --------------------------------------------------------------------------------

    @property
    def kind(self) -> str:
        """What checkpoints record as ``model_kind``: the class that ``load_checkpoint`` rebuilds."""
        return type(self).__name__

    @property
    def base_kind(self) -> str:
        """The LM kind of ``self.model``, which ``init_from`` checkpoints must hold: the module's own
        kind, except for modules built around another kind's torch model (a reward model on a
        CausalLM's decoder)."""
        return self.kind

    @property
    def peft_method(self):
        """The PEFT method applied to ``self.model`` (``llm_modules.peft``), or None."""
        return self.finetuning.method

    @property
    def init_from(self) -> str | None:
        """The resolved path of the base this model started from, or None."""
        return self.finetuning.init_from

    @property
    def peft_checkpoint(self) -> str:
        """``adapter``: checkpoints keep only the method's tensors; ``full``: every tensor."""
        return self.finetuning.checkpoint_mode

    @peft_checkpoint.setter
    def peft_checkpoint(self, mode: str) -> None:
        self.finetuning.checkpoint_mode = checkpoint_mode(mode)

    def num_parameters(self) -> int:
        return count_parameters(self.model)

    # ---- checkpoints --------------------------------------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """What a checkpoint holds beside the weights and the hyper-parameters, each fact once: the kind of
        the torch model, the tokens seen, fine-tuning's state and the tokenizer
        (``llm_modules.checkpoint_contents`` reads them back)."""
        self.finetuning.on_save_checkpoint(self, checkpoint)
        checkpoint[KIND_KEY] = self.kind
        checkpoint["tokens_seen"] = self.tokens_seen
        if self.tokenizer_bytes is not None:
            checkpoint["tokenizer"] = self.tokenizer_bytes

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.finetuning.on_load_checkpoint(self, checkpoint)
        self.tokens_seen = int(checkpoint.get("tokens_seen", 0))
        self.tokenizer_bytes = checkpoint.get("tokenizer", self.tokenizer_bytes)

    # ---- inference ----------------------------------------------------------------------------------------

    @property
    def tokenizer(self):
        """The tokenizer this model was trained with (kept in its checkpoints), or None."""
        if self.tokenizer_bytes is None:
            return None
        cached = getattr(self, "_tokenizer", None)
        if cached is None or cached[0] is not self.tokenizer_bytes:
            from llm_modules.data.hf_tokenizer import tokenizer_from_bytes

            cached = (self.tokenizer_bytes, tokenizer_from_bytes(self.tokenizer_bytes))
            self._tokenizer = cached
        return cached[1]

    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **options) -> torch.Tensor:
        """Token ids continuing ``input_ids``: greedy, sampling or beam search, with a KV cache
        (options and defaults: ``llm_modules.generation.generate``)."""
        from llm_modules.generation import generate

        return generate(self, input_ids, attention_mask, **options)

    def fill_mask(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, top_k: int = 5, **options):
        """An encoder-only model's top-k tokens and probabilities at each mask position
        (``llm_modules.generation.fill_mask``, which refuses the kinds that generate instead)."""
        from llm_modules.generation import fill_mask

        return fill_mask(self, input_ids, attention_mask, top_k=top_k, **options)
