"""Alignment: a reward model trained on preference pairs, DPO, and PPO against a reward model.

Each is a LanguageModel, so ``model.init_from``, ``model.peft``, the optimizer, memory savers,
strategies and checkpoints work as for the other kinds, through the same ``llm-modules fit``:

- ``RewardModel`` (``alignment.reward``): an LM backbone with a scalar value head read at the last
  real token, trained with the pairwise loss on ``PreferenceDataModule`` batches.
- ``DPO`` (``alignment.dpo``): a policy trained directly on preference pairs against a frozen
  reference (a copy of the start, or the base itself with a PEFT method switched off).
- ``PPO`` (``alignment.ppo``): a policy optimized against a reward model with a KL penalty.

The losses are plain torch functions in ``alignment.losses``.
"""

from llm_modules.alignment.dpo import DPO
from llm_modules.alignment.losses import dpo_loss, pairwise_reward_loss, sequence_logprobs
from llm_modules.alignment.reward import RewardModel

__all__ = ["DPO", "RewardModel", "dpo_loss", "pairwise_reward_loss", "sequence_logprobs"]

# ---- PPO registers below (alignment.ppo) -----------------------------------------------------------------------
from llm_modules.alignment.ppo import PPO  # noqa: E402  (after the names it builds on)
from llm_modules.alignment.ppo_config import KLConfig, PPOConfig  # noqa: E402

__all__ += ["KLConfig", "PPO", "PPOConfig"]
