"""The LightningModule base shared by every LM kind: config, loss plumbing, optimizer, logging, checkpoints.

A subclass says which torch model to build (``build_model``), how a batch becomes logits and
targets (``logits_and_targets``); everything else lives here once.
"""

from __future__ import annotations

import abc

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from llm_modules.config import ModelConfig
from llm_modules.nn.lm import aux_loss

IGNORE_INDEX = -100


def as_config(config: ModelConfig | dict | str) -> ModelConfig:
    """Accept a ModelConfig, its dict form, or the name of a preset."""
    if isinstance(config, ModelConfig):
        return config
    if isinstance(config, str):
        return ModelConfig.from_preset(config)
    return ModelConfig.from_dict(dict(config))


class LanguageModel(L.LightningModule, abc.ABC):
    """Base of CausalLM, PrefixLM, Seq2SeqLM and MaskedLM."""

    def __init__(
        self,
        config: ModelConfig | dict | str,
        learning_rate: float = 3e-4,
        weight_decay: float = 0.1,
        betas: tuple[float, float] = (0.9, 0.95),
    ):
        super().__init__()
        self.config = as_config(config)
        self.learning_rate, self.weight_decay, self.betas = learning_rate, weight_decay, tuple(betas)
        self.save_hyperparameters({"config": self.config.to_dict(), "learning_rate": learning_rate,
                                   "weight_decay": weight_decay, "betas": list(betas)})
        self.model = self.build_model(self.config)

    # ---- what a subclass provides ---------------------------------------------------------------------------

    @abc.abstractmethod
    def build_model(self, config: ModelConfig) -> nn.Module:
        """The torch model of this LM kind."""

    @abc.abstractmethod
    def logits_and_targets(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (B, T, V) and targets (B, T) with IGNORE_INDEX where no loss is taken."""

    # ---- shared ---------------------------------------------------------------------------------------------

    @property
    def kind(self) -> str:
        return type(self).__name__

    def compute_loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Mean token cross-entropy over the targets, plus any auxiliary (MoE) loss."""
        logits, targets = self.logits_and_targets(batch)
        lm_loss = F.cross_entropy(
            logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX
        )
        extra = aux_loss(self.model)
        total = lm_loss if extra is None else lm_loss + extra
        return {"loss": total, "lm_loss": lm_loss, "tokens": (targets != IGNORE_INDEX).sum()}

    def training_step(self, batch, batch_idx):
        out = self.compute_loss(batch)
        self.log("train/loss", out["lm_loss"], prog_bar=True)
        return out["loss"]

    def validation_step(self, batch, batch_idx):
        out = self.compute_loss(batch)
        self.log("val/loss", out["lm_loss"], prog_bar=True, sync_dist=True)
        self.log("val/ppl", torch.exp(out["lm_loss"].clamp(max=50)), sync_dist=True)
        return out["loss"]

    def test_step(self, batch, batch_idx):
        out = self.compute_loss(batch)
        self.log("test/loss", out["lm_loss"], sync_dist=True)
        return out["loss"]

    def configure_optimizers(self):
        """AdamW with no weight decay on norms, biases and embeddings (the usual LLM recipe)."""
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            (no_decay if p.ndim < 2 or "embed" in name or "position" in name else decay).append(p)
        groups = [{"params": decay, "weight_decay": self.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=self.learning_rate, betas=self.betas, eps=1e-8)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["model_config"] = self.config.to_dict()
        checkpoint["model_kind"] = self.kind

    def num_parameters(self) -> int:
        return sum(p.numel() for p in {id(p): p for p in self.model.parameters()}.values())


def shift_targets(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Next-token targets: position t predicts token t+1; the last position and padding predict nothing."""
    targets = torch.full_like(input_ids, IGNORE_INDEX)
    targets[:, :-1] = input_ids[:, 1:]
    if attention_mask is not None:
        real_next = torch.zeros_like(attention_mask, dtype=torch.bool)
        real_next[:, :-1] = attention_mask[:, 1:].bool()
        targets = targets.masked_fill(~real_next, IGNORE_INDEX)
    return targets


