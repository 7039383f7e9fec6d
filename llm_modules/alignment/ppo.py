"""PPO: a policy LM optimized against a reward, with a KL penalty to a frozen reference (RLHF:
Ziegler et al. 2019; Stiennon et al. 2020; Ouyang et al. 2022), under manual optimization.

One training step is one rollout batch, the data module's batch of prompts
(``data.RLPromptDataModule``):

1. **Sample** a response to each prompt with the policy (``alignment.rollout``: the generation API,
   sampling seeded with ``ppo.seed`` + the rollout count).
2. **Score** each response (``alignment.reward_source``: a frozen RewardModel, or a Python
   function), and read, for every response token, the policy's and the reference's
   log-probabilities and the critic's value.
3. **Reward per token**: ``-kl_coef * KL_t`` at every token (``rl.kl_penalty``) plus the score at the
   last one; **advantages** by GAE (``rl.gae``), whitened over the batch (``rl.whiten``).
4. **Update**: ``ppo_epochs`` passes over the batch in shuffled minibatches, each an optimizer step
   on the clipped policy loss + ``vf_coef`` x the clipped value loss - ``entropy_coef`` x the
   entropy (``rl.policy_loss``, ``rl.value_loss``, ``rl.entropy``); the update stops early when a
   minibatch's policy KL to the sampling policy passes 1.5 x ``target_kl``. Then the KL controller
   adapts the coefficient (``rl.AdaptiveKLController``) when asked to.

Logged per rollout batch: ``ppo/reward`` (mean score), ``ppo/kl`` (mean KL to the reference per
response, sum of the per-token log ratios), ``ppo/kl_coef``, ``ppo/clip_fraction``, ``ppo/entropy``,
``ppo/value_loss``, ``ppo/policy_loss``, ``ppo/value_clip_fraction``, ``ppo/policy_kl`` (mean over
the minibatches looked at), ``ppo/epochs_run`` (updates applied / minibatches per epoch: 4.0 is a
full update with ``ppo_epochs: 4``, less after an early stop), ``ppo/response_length``; and
``train/grad_norm``, ``train/lr``. Validation (``val_prompts_file``) logs ``val/reward``,
``val/kl`` and ``val/response_length`` of rollouts sampled with a fixed seed.

The pieces:

- **Actor**: the policy, ``self.model``, a ``DecoderLM`` like CausalLM's, so ``init_from``, ``peft``,
  memory savers, generation and the rest work as for a CausalLM.
- **Critic**: a ``ValueHead`` (``nn.value_head``) on the policy's last hidden states
  (``ppo.critic: shared``), or on a copy of the initial backbone (``separate``: ``self.critic``).
- **Reference**: the policy as training started, frozen. With a PEFT method it is the same model
  with the method switched off (``peft.adapters_disabled``): no second copy of the weights. Without
  one it is a frozen copy made at construction (the ``init_from`` weights, or the fresh
  initialization), kept out of the state dict, optimizer and strategy. It is never saved: a
  checkpoint that names its base (``init_from``) rebuilds it from there when training or validation
  next needs it, so a resumed run penalizes against the same reference; a run without
  ``init_from`` rebuilds it from the seed (``seed_everything``), as it built the policy.
- **Dropout is off** in every PPO forward (sampling, scoring, updates): the ratio of new to old
  probabilities must be exactly 1 before the first step, and the KL must compare the functions
  themselves (TRL and OpenRLHF do the same).

Counting: Lightning's ``global_step`` counts optimizer steps under manual optimization, so
``trainer.max_steps`` bounds updates (``ppo_epochs`` x minibatches per rollout, fewer after an
early stop), while the logged step (the loggers' x axis) counts rollout batches; bound a run in
rollouts with ``trainer.max_epochs`` and ``trainer.limit_train_batches``. The learning-rate schedule
follows the updates (``optim.max_steps``, else ``trainer.max_steps``, else the planned rollouts x
updates per rollout).

Gradient clipping: Lightning refuses a trainer's ``gradient_clip_val`` under manual optimization,
so PPO takes it over (``configure_callbacks``) and clips each update itself, at
``ppo.max_grad_norm`` or, when that is null, at the trainer's value (1.0 with the CLI's defaults).
Non-finite gradients skip the update (``stability.skip_nonfinite``); the loss-spike guard
(``stability.spike_guard``) judges token losses and is refused here.

Checkpoints record ``model_kind: PPO`` (``checkpoint.load_checkpoint`` rebuilds the module: the
policy generates as a CausalLM does) with the value head (or critic) and the KL controller's state.
With a PEFT method, adapter-only checkpoints keep the value head (or the whole separate critic)
beside the method's tensors (``trained_beside_peft``).

Data parallelism (DDP): every process takes the same number of updates (the early-stop KL is
averaged over processes), and Lightning synchronizes the gradients of each ``manual_backward``
under manual optimization, so the several backward passes of one rollout stay in step. Checked by
hand on two CPU processes (``--trainer.devices 2 --trainer.strategy ddp``: after 24 updates on
different prompts the trainable weights were identical on both); the suite tests one process.
"""

from __future__ import annotations

import copy
import logging
import math
from collections import defaultdict
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from llm_modules.alignment.ppo_config import PPOConfig, as_ppo_config
from llm_modules.alignment.preference import PreferenceModel, evaluating
from llm_modules.alignment.reference import FrozenReference
from llm_modules.alignment.reward_source import ModelReward, build_reward, reward_spec
from llm_modules.alignment.rl import (
    AdaptiveKLController,
    FixedKLController,
    entropy,
    gae,
    kl_penalty,
    policy_loss,
    token_logprobs,
    value_loss,
    whiten,
)
from llm_modules.alignment.rollout import Samples, sample
from llm_modules.config import ModelConfig
from llm_modules.generation.prompts import stop_ids
from llm_modules.models.causal import CausalLM
from llm_modules.nn.value_head import ValueHead
from llm_modules.peft import adapters_disabled
from llm_modules.registry import ConfigError
import llm_modules.models.finetuning as finetune
from llm_modules.training.grad_norm import grad_norm
from llm_modules.training.memory import MemoryConfig
from llm_modules.training.optim import OptimConfig, build_optimizer, build_scheduler
from llm_modules.training.stability import StabilityConfig

log = logging.getLogger("llm_modules.alignment")

STATE_KEY = "ppo_state"  # the KL coefficient and the rollout count, in checkpoints
_SEED_STRIDE = 1_000_003  # seeds of different processes never meet


@dataclass
class Rollout:
    """A scored rollout batch with everything the update reads; (B, n) per response token."""

    samples: Samples
    logprobs: torch.Tensor      # of the sampled tokens under the sampling policy
    ref_logprobs: torch.Tensor  # ... under the reference
    values: torch.Tensor        # the critic's estimates before each token
    advantages: torch.Tensor
    returns: torch.Tensor
    scores: torch.Tensor        # (B,) the reward source's
    kl: torch.Tensor            # (B,) KL to the reference per response: sum of the log ratios


class PPO(FrozenReference, CausalLM):
    """A policy trained with PPO on rollouts of ``RLPromptDataModule`` prompts (module docstring).

    Args:
        reward: where rewards come from: a RewardModel checkpoint path, a function
            ``package.module:function``, or ``{name: package.module:function, **options}``
            (``alignment.reward_source``; examples in ``alignment.toy_rewards``).
        ppo: the PPO options (``PPOConfig``: sampling, epochs, clipping, KL control, critic).
        The others as for every LanguageModel; ``init_from`` names the policy to start from (an SFT
        or pre-trained CausalLM), whose config is the model's.
    """

    pipeline_ready = False  # its loss is PPO's, over rollouts, not the token cross-entropy

    base_kind_fix = "PPO trains a CausalLM policy; give a CausalLM checkpoint or Hugging Face folder as model.init_from"

    def __init__(
        self,
        config: ModelConfig | dict | str | None = None,
        reward: str | dict[str, Any] | None = None,
        ppo: PPOConfig | None = None,
        optim: OptimConfig | None = None,
        memory: MemoryConfig | None = None,
        stability: StabilityConfig | None = None,
        init_from: str | None = None,
        peft: dict | str | None = None,
        peft_checkpoint: str = "adapter",
    ):
        options = as_ppo_config(ppo)  # both checked before any weights are read
        spec = reward_spec(reward)
        super().__init__(config, optim=optim, memory=memory, stability=stability, init_from=init_from, peft=peft,
                         peft_checkpoint=peft_checkpoint)
        if self.stability.spike_guard:
            raise ConfigError("model.stability.spike_guard judges token losses, which PPO does not have; set it to "
                              "false (non-finite gradients still skip an update: skip_nonfinite)")
        self.automatic_optimization = False
        self.ppo = options
        self.hparams.update(ppo=options.to_dict(), reward=spec)
        # Validation scores rollouts (val/reward), not generation metrics, so PPO takes no
        # ``evaluation`` argument; a resumed run rebuilds the module from these hyper-parameters.
        self.hparams.pop("evaluation", None)
        self.reward_source = build_reward(spec)
        like = self.model.embed.tokens.weight
        if options.critic == "separate":
            self.critic = copy.deepcopy(self.model)
            self.critic.head = ValueHead(self.config.d_model, device=like.device, dtype=like.dtype)
            self.value_head = None
        else:
            self.critic = None
            self.value_head = ValueHead(self.config.d_model, device=like.device, dtype=like.dtype)
        # Values start at 0: the first advantages are then the rewards themselves, not the noise of
        # an untrained critic, which would push the policy about at random while the critic learns.
        nn.init.zeros_(self._value_head().proj.weight)
        kl = options.kl
        self.kl_controller = (AdaptiveKLController(kl.coef, kl.target, kl.horizon) if kl.adaptive
                              else FixedKLController(kl.coef))
        self.rollouts = 0
        self.skipped_updates = 0
        self._rebuild_reference_from: str | None = None
        self._taken_clipping: tuple[float, str | None] | None = None
        self._last_rows: torch.Tensor | None = None
        if self.peft_method is None:
            self.keep_reference(self.model)
        else:
            with adapters_disabled(self.model):  # refuses, now, a method that cannot be switched off
                pass

    # ---- what the module is --------------------------------------------------------------------------------

    @property
    def base_kind(self) -> str:
        """``init_from`` must hold a CausalLM: the policy is one."""
        return "CausalLM"

    @property
    def trained_beside_peft(self) -> tuple[str, ...]:
        """With a PEFT method, adapter-only checkpoints keep the value head, or the separate critic whole."""
        return ("critic",) if self.critic is not None else ("value_head",)

    def _value_head(self) -> ValueHead:
        return self.value_head if self.critic is None else self.critic.head

    def batch_rows(self, batch) -> torch.Tensor:
        """The rows a rollout batch fed the model: prompts and responses (tokens seen, throughput)."""
        if "prompt_ids" in batch and self._last_rows is not None:
            return self._last_rows
        return batch["prompt_ids"] if "prompt_ids" in batch else super().batch_rows(batch)

    # ---- forward passes ------------------------------------------------------------------------------------

    def _policy_forward(self, sequences: torch.Tensor, attention_mask: torch.Tensor, width: int,
                        n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Tempered logits (b, n, V) at the positions that predict the n response tokens, and the
        critic's values (b, n) at the same positions (the state before each token)."""
        mask = None if bool(attention_mask.all()) else attention_mask
        window = slice(width - 1, width - 1 + n)
        hidden = self.model.hidden(sequences, mask)[:, window]
        logits = self.model.head(hidden).float() / self.ppo.temperature
        if self.critic is None:
            values = self.value_head(hidden)
        else:
            values = self.critic(sequences, mask)[:, window]
        return logits, values.float()

    @torch.no_grad()
    def reference_logprobs(self, samples: Samples) -> torch.Tensor:
        """(B, n) the reference's log-probabilities of the sampled response tokens (tempered alike)."""
        reference = self._current_reference()
        model = reference if reference is not None else self.model
        switched_off = adapters_disabled(self.model) if reference is None else nullcontext()
        mask = None if bool(samples.attention_mask.all()) else samples.attention_mask
        width, n = samples.prompt_width, samples.responses.shape[1]
        with switched_off, evaluating(model):
            hidden = model.hidden(samples.sequences, mask)[:, width - 1 : width - 1 + n]
            logits = model.head(hidden).float() / self.ppo.temperature
        return token_logprobs(logits, samples.responses)

    def _current_reference(self) -> nn.Module | None:
        """The frozen copy, rebuilt first from the base a loaded checkpoint recorded (class docstring)."""
        source = self._rebuild_reference_from
        if source is not None:
            self.rebuild_reference(source)
            self._rebuild_reference_from = None
        return self.reference_model

    # ---- rollouts ------------------------------------------------------------------------------------------

    @torch.no_grad()
    def rollout(self, batch: dict[str, Any], seed: int) -> Rollout:
        """Sample, score and estimate advantages for a batch of prompts (steps 1-3 of the module docstring)."""
        tokenizer = self._text_tokenizer()
        with evaluating(self):
            samples = sample(
                self.model, batch["prompt_ids"], batch.get("prompt_mask"), max_new_tokens=self.ppo.max_new_tokens,
                temperature=self.ppo.temperature, top_k=self.ppo.top_k, top_p=self.ppo.top_p,
                stop_ids=tuple(stop_ids(self, tokenizer)), pad_id=self.config.pad_token_id, seed=seed,
            )
            n = samples.responses.shape[1]
            logits, values = self._policy_forward(samples.sequences, samples.attention_mask, samples.prompt_width, n)
            logprobs = token_logprobs(logits, samples.responses)
            ref_logprobs = self.reference_logprobs(samples)
        scores = self.reward_source(samples, tokenizer, batch.get("prompts"))
        mask = samples.response_mask
        rewards = -self.kl_controller.value * kl_penalty(logprobs, ref_logprobs, self.ppo.kl.estimator) * mask
        rows = torch.arange(rewards.shape[0], device=rewards.device)
        rewards[rows, samples.lengths - 1] += scores
        values = values * mask
        advantages, returns = gae(rewards, values, mask, self.ppo.gamma, self.ppo.lam)
        if self.ppo.whiten_advantages:
            advantages = whiten(advantages, mask)
        kl = ((logprobs - ref_logprobs) * mask).sum(1)
        return Rollout(samples, logprobs, ref_logprobs, values, advantages, returns, scores, kl)

    def _text_tokenizer(self):
        """The tokenizer the prompts were read with (the data module's, else the model's), or None."""
        return getattr(self._datamodule(), "tokenizer", None) or self.tokenizer

    def _seed(self, offset: int) -> int:
        return self.ppo.seed + offset + _SEED_STRIDE * self.global_rank

    # ---- the update ----------------------------------------------------------------------------------------

    def training_step(self, batch, batch_idx):
        rollout = self.rollout(batch, self._seed(self.rollouts))
        self._last_rows = rollout.samples.sequences
        coef = self.kl_controller.value
        with evaluating(self):  # no dropout; gradients flow (module docstring)
            stats = self.update(rollout, self._seed(self.rollouts))
        kl = self._mean_over_processes(rollout.kl.mean())
        self.kl_controller.update(float(kl), rollout.kl.numel() * self.trainer.world_size)
        self.rollouts += 1
        size = rollout.kl.numel()
        self.log("ppo/reward", self._mean_over_processes(rollout.scores.mean()), prog_bar=True, batch_size=size)
        self.log("ppo/kl", kl, prog_bar=True, batch_size=size)
        self.log("ppo/kl_coef", coef, batch_size=size)
        self.log("ppo/response_length", rollout.samples.lengths.float().mean(), batch_size=size)
        self.log_dict({f"ppo/{name}": value for name, value in stats.items()}, batch_size=size)

    def update(self, rollout: Rollout, seed: int) -> dict[str, float]:
        """``ppo_epochs`` passes over the rollout in shuffled minibatches, one optimizer step each,
        stopping early on the policy KL (``target_kl``); returns the figures to log."""
        optimizer, scheduler = self.optimizers(), self.lr_schedulers()
        options, s = self.ppo, rollout.samples
        batch, n = s.sequences.shape[0], s.responses.shape[1]
        size = min(options.minibatch_size or batch, batch)
        per_epoch = math.ceil(batch / size)
        order = torch.Generator().manual_seed(seed)
        sums: dict[str, float] = defaultdict(float)
        looked, updates = 0, 0
        for _ in range(options.ppo_epochs):
            permutation = torch.randperm(batch, generator=order).to(s.sequences.device)
            for start in range(0, batch, size):
                rows = permutation[start : start + size]
                mask = s.response_mask[rows]
                logits, values = self._policy_forward(s.sequences[rows], s.attention_mask[rows], s.prompt_width, n)
                policy = policy_loss(token_logprobs(logits, s.responses[rows]), rollout.logprobs[rows],
                                     rollout.advantages[rows], mask, options.clip_range)
                policy_kl = float(self._mean_over_processes(policy.approx_kl))
                sums["policy_kl"] += policy_kl
                looked += 1
                if options.target_kl is not None and policy_kl > 1.5 * options.target_kl:
                    return self._stats(sums, looked, updates, per_epoch)
                value = value_loss(values, rollout.values[rows], rollout.returns[rows], mask, options.value_clip_range)
                spread = entropy(logits if options.entropy_coef else logits.detach(), mask)
                loss = policy.loss + options.vf_coef * value.loss - options.entropy_coef * spread
                optimizer.zero_grad()
                self.manual_backward(loss)
                optimizer.step()
                scheduler.step()
                updates += 1
                for name, figure in (("policy_loss", policy.loss), ("clip_fraction", policy.clip_fraction),
                                     ("value_loss", value.loss), ("value_clip_fraction", value.clip_fraction),
                                     ("entropy", spread)):
                    sums[name] += float(figure.detach())
        return self._stats(sums, looked, updates, per_epoch)

    @staticmethod
    def _stats(sums: dict[str, float], looked: int, updates: int, per_epoch: int) -> dict[str, float]:
        stats = {name: total / max(updates, 1) for name, total in sums.items() if name != "policy_kl"}
        stats["policy_kl"] = sums["policy_kl"] / max(looked, 1)
        stats["epochs_run"] = updates / per_epoch
        return stats

    def _mean_over_processes(self, value: torch.Tensor) -> torch.Tensor:
        """The mean over data-parallel processes, so that all of them decide alike."""
        if self.trainer.world_size > 1:
            value = self.trainer.strategy.reduce(value.detach().float(), reduce_op="mean")
        return value

    # ---- optimization --------------------------------------------------------------------------------------

    def configure_optimizers(self):
        """The optimizer over every trainable parameter (policy, value head, critic), and the
        schedule over the planned updates (module docstring)."""
        optimizer = build_optimizer(self.named_parameters(), self.optim, trainer=self.trainer)
        scheduler = build_scheduler(optimizer, self.optim, self._planned_updates())
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _planned_updates(self) -> int:
        if self.optim.max_steps:
            return self.optim.max_steps
        trainer = self.trainer
        if trainer.max_steps and trainer.max_steps > 0:
            return trainer.max_steps
        rollouts = trainer.estimated_stepping_batches
        if not math.isfinite(rollouts):
            raise ConfigError("model.optim.max_steps: the run has no end to plan the learning-rate schedule over; "
                              "set model.optim.max_steps (updates), trainer.max_steps or trainer.max_epochs")
        batch = getattr(self._datamodule(), "batch_size", None) or self.ppo.minibatch_size or 1
        size = min(self.ppo.minibatch_size or batch, batch)
        return max(1, int(rollouts) * self.ppo.ppo_epochs * math.ceil(batch / size))

    def configure_callbacks(self):
        """No callbacks: this is the last hook before Lightning checks the trainer's settings for a
        manually optimized module, which refuse ``gradient_clip_val``, so PPO takes that value over
        here and clips each update itself (module docstring); ``teardown`` gives it back."""
        trainer = self.trainer
        if trainer.accumulate_grad_batches != 1:
            raise ConfigError(f"trainer.accumulate_grad_batches={trainer.accumulate_grad_batches}: PPO steps once per "
                              "minibatch of each rollout; set it to 1 and size the update with model.ppo.minibatch_size")
        if trainer.gradient_clip_val:
            self._taken_clipping = (float(trainer.gradient_clip_val), trainer.gradient_clip_algorithm or "norm")
            trainer.gradient_clip_val = None
        return []

    def teardown(self, stage: str) -> None:
        if self._taken_clipping is not None and self._trainer is not None:
            self.trainer.gradient_clip_val = self._taken_clipping[0]
            self._taken_clipping = None

    def _clipping(self) -> tuple[float | None, str | None]:
        if self.ppo.max_grad_norm is not None:
            return (self.ppo.max_grad_norm or None), "norm"
        return self._taken_clipping or (None, None)

    def on_before_optimizer_step(self, optimizer) -> None:
        """After backward (and fp16 unscaling): log the norm, skip non-finite gradients, clip."""
        norm = grad_norm(self)
        if norm is not None and self.stability.log_grad_norm:
            self.log("train/grad_norm", norm.detach().float())
        if norm is not None and self.stability.skip_nonfinite and not bool(torch.isfinite(norm)):
            for p in self.parameters():
                p.grad = None  # the optimizer then leaves every parameter as it is
            self.skipped_updates += 1
            log.warning("ppo: rollout %d: non-finite gradients (norm %s); update skipped", self.rollouts, float(norm))
            self.log("train/skipped_updates", float(self.skipped_updates))
            return
        value, algorithm = self._clipping()
        if value:
            self.configure_gradient_clipping(optimizer, value, algorithm)

    # ---- evaluation ----------------------------------------------------------------------------------------

    def validation_step(self, batch, batch_idx):
        self._score_pass(batch, batch_idx, "val")

    def test_step(self, batch, batch_idx):
        self._score_pass(batch, batch_idx, "test")

    def _score_pass(self, batch, batch_idx: int, split: str) -> None:
        """Mean reward, KL and length of rollouts sampled with a fixed seed: comparable across passes."""
        rollout = self.rollout(batch, self.ppo.seed + batch_idx + _SEED_STRIDE * self.global_rank)
        size = rollout.kl.numel()
        self.log(f"{split}/reward", rollout.scores.mean(), prog_bar=True, sync_dist=True, batch_size=size)
        self.log(f"{split}/kl", rollout.kl.mean(), sync_dist=True, batch_size=size)
        self.log(f"{split}/response_length", rollout.samples.lengths.float().mean(), sync_dist=True, batch_size=size)
        if self._trainer is not None and self.trainer.sanity_checking:
            figures = {"reward": rollout.scores.mean(), "kl": rollout.kl.mean(),
                       "response_length": rollout.samples.lengths.float().mean()}
            self._sanity_sums.append((size, {name: float(value) for name, value in figures.items()}))

    # The validation before training (``num_sanity_val_steps``) is written to the loggers at step 0,
    # the policy as it starts, as the preference modules do: their hooks, which read only
    # ``_sanity_sums`` and the trainer.
    on_validation_epoch_start = PreferenceModel.on_validation_epoch_start
    on_validation_epoch_end = PreferenceModel.on_validation_epoch_end

    def setup(self, stage: str) -> None:
        """Load a RewardModel reward before training or evaluation (not for predict)."""
        super().setup(stage)
        if stage in ("fit", "validate", "test") and isinstance(self.reward_source, ModelReward):
            self.reward_source.load(self)

    # ---- checkpoints ---------------------------------------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint[STATE_KEY] = {"kl_coef": self.kl_controller.value, "rollouts": self.rollouts,
                                 "skipped_updates": self.skipped_updates}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """The KL controller and rollout count come back; a checkpoint that keeps every tensor names
        no base in its hyper-parameters, so this module was built from nothing and its reference
        copy is rebuilt from the base the checkpoint recorded, when first needed."""
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get(STATE_KEY) or {}
        self.kl_controller.value = float(state.get("kl_coef", self.kl_controller.value))
        self.rollouts = int(state.get("rollouts", 0))
        self.skipped_updates = int(state.get("skipped_updates", 0))
        recorded = (checkpoint.get(finetune.KEY) or {}).get("init_from")
        if self.reference_model is not None and self.init_from is None and recorded:
            self._rebuild_reference_from = recorded
