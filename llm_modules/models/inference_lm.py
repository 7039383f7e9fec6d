"""``InferenceLM``: a checkpoint's (or a Hugging Face folder's) model for generation, evaluation and file
conversion, without Lightning.

Commands that only read a model (``generate``, ``convert``, ``export``, ``quantize``) would otherwise pay
Lightning's import (seconds, most of their run) for a class whose training machinery they never use.
An ``InferenceLM`` is the same model (``ModelDefinition``: config, kind, torch model, fine-tuning
state, tokenizer) in a plain ``nn.Module``: its state dict, its checkpoints and what ``to_hf`` writes
of it are those of the LightningModule of its kind, so either loads what the other saved.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from llm_modules.checkpoint_contents import STABILITY_KEY
from llm_modules.config import ModelConfig
from llm_modules.kinds import KINDS, by_class_name
from llm_modules.models.definition import ModelDefinition
from llm_modules.registry import ConfigError


class InferenceLM(ModelDefinition, nn.Module):
    """One of the LM kinds (``kind``: ``CausalLM``, ``PrefixLM``, ``Seq2SeqLM``, ``MaskedLM``) without its
    training: ``lm(...)`` is the torch model's forward, ``lm.generate(...)`` generates.

    ``hyper_parameters`` are those of the checkpoint it comes from (kept as they are, so a checkpoint
    written back holds the same options); a model made from a config alone records the ones that
    rebuild it, the training options left at their defaults."""

    def __init__(self, kind: str, config: ModelConfig | dict | str | None = None, *, init_from: str | None = None,
                 peft: dict | str | None = None, peft_checkpoint: str = "adapter",
                 hyper_parameters: dict[str, Any] | None = None):
        super().__init__()
        known = by_class_name(kind)
        if known is None:
            names = ", ".join(k.class_name for k in KINDS.values())
            raise ConfigError(f"InferenceLM: kind {kind!r} is not one of {names}")
        self._kind = known.class_name
        self._start_finetuning(config, init_from, peft, peft_checkpoint)
        self.hparams = {"_class_path": known.class_path, **(hyper_parameters or {}), "config": self.config.to_dict(),
                        "init_from": self.finetuning.init_from, "peft": self.finetuning.peft,
                        "peft_checkpoint": peft_checkpoint}
        #: checkpoint entries of training that this model carries unchanged when it is saved again
        self.carried: dict[str, Any] = {}
        #: as the LightningModule's: False while an adapter-only checkpoint leaves the base out
        self.strict_loading = True
        self._build()

    @property
    def kind(self) -> str:
        return self._kind

    def forward(self, *args, **kwargs):
        """The torch model's forward (``llm_modules.nn.lm``): logits."""
        return self.model(*args, **kwargs)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint.update(self.carried)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self.carried = {key: checkpoint[key] for key in (STABILITY_KEY,) if checkpoint.get(key) is not None}
