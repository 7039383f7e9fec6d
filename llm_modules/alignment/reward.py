"""RewardModel: a decoder LM with a scalar head, trained to score the chosen response of a pair
above the rejected one (Ouyang et al., 2022; Stiennon et al., 2020).

The backbone is the LM kind's own torch model (``DecoderLM``), so ``init_from`` loads an SFT or
pre-trained checkpoint as it is; right after that its LM head is swapped for a ``ValueHead``, and
``model(input_ids, ...)`` returns a value per position. A sequence's reward is the value at its
last real token (``score``), the one position that has read prompt and response.

With a PEFT method the backbone is frozen and adapted, and the value head, which is new, trains in
full beside the method: adapter-only checkpoints keep it (``trained_beside_peft``).

Checkpoints record ``model_kind: RewardModel``; ``llm_modules.checkpoint.load_checkpoint`` rebuilds
one from them (PPO reads its reward model that way).
"""

from __future__ import annotations

from typing import Any

import torch

from llm_modules.alignment.losses import pairwise_reward_loss
from llm_modules.alignment.preference import PreferenceModel, joined
from llm_modules.config import ModelConfig
from llm_modules.nn.value_head import ValueHead, read_last
from llm_modules.registry import ConfigError
from llm_modules.training.memory import MemoryConfig
from llm_modules.training.optim import OptimConfig
from llm_modules.training.stability import StabilityConfig


class RewardModel(PreferenceModel):
    """A reward model: ``score(input_ids, attention_mask) -> (B,)`` rewards.

    Trained on ``PreferenceDataModule`` batches with ``-log sigmoid(r_chosen - r_rejected - margin)``
    (margin: the records' ``margin`` field, 0 where absent). Logs ``loss``, ``accuracy`` (the share
    of pairs ranked right), ``reward_margin`` (mean r_chosen - r_rejected) and the mean rewards
    ``reward_chosen`` / ``reward_rejected``, for train and val.

    Args: ``backbone``: the LM kind of the backbone (CausalLM, PrefixLM; that of ``init_from``); the
    others as for every LanguageModel.
    """

    trained_beside_peft = ("model.head",)
    progress_metrics = ("accuracy",)

    def __init__(
        self,
        config: ModelConfig | dict | str | None = None,
        backbone: str = "CausalLM",
        optim: OptimConfig | None = None,
        memory: MemoryConfig | None = None,
        stability: StabilityConfig | None = None,
        init_from: str | None = None,
        peft: dict | str | None = None,
        peft_checkpoint: str = "adapter",
    ):
        super().__init__(config, backbone, optim=optim, memory=memory, stability=stability, init_from=init_from,
                         peft=peft, peft_checkpoint=peft_checkpoint)
        if self.peft_method is not None:
            on_head = sorted(k for k in self.peft_method.added_keys if k.startswith("head."))
            if on_head:
                raise ConfigError(f"model.peft adapts the LM head ({on_head[0]}), which a reward model replaces by "
                                  "its value head (trained in full); leave the head out of the method's targets")
        like = self.model.embed.tokens.weight
        # After the base weights and the method: the head is new, so it trains whatever froze the rest.
        self.model.head = ValueHead(self.config.d_model, device=like.device, dtype=like.dtype)

    def score(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
              prefix_lengths: torch.Tensor | None = None) -> torch.Tensor:
        """(B,) the reward of each row: the value at its last real token (right or left padding)."""
        return read_last(self(input_ids, attention_mask, prefix_lengths), attention_mask).float()

    def compute_loss(self, batch: dict[str, Any]) -> dict[str, Any]:
        both = joined(batch)
        chosen, rejected = self.score(both["input_ids"], both["attention_mask"], both["prefix_lengths"]).chunk(2)
        loss = pairwise_reward_loss(chosen, rejected, batch.get("margin"))
        gap = (chosen - rejected).detach()
        metrics = {"accuracy": (gap > 0).float().mean(), "reward_margin": gap.mean(),
                   "reward_chosen": chosen.detach().mean(), "reward_rejected": rejected.detach().mean()}
        return {"loss": loss, "lm_loss": loss, "tokens": torch.tensor(len(gap)), "metrics": metrics,
                "pairs": {"reward_chosen": chosen.detach(), "reward_rejected": rejected.detach()}}

    def logits_and_targets(self, batch):
        raise ConfigError("a RewardModel scores sequences and has no token logits; use score(input_ids, "
                          "attention_mask), or train it on data: llm_modules.data.PreferenceDataModule")

    def predict_step(self, batch, batch_idx):
        """Rewards: per pair for preference batches, per row (``reward``) for plain token batches."""
        if "chosen_input_ids" in batch:
            return super().predict_step(batch, batch_idx)
        mask = batch.get("attention_mask")
        return {"reward": self.score(batch["input_ids"], mask, batch.get("prefix_lengths"))}
