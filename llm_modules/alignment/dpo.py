"""DPO: Direct Preference Optimization (Rafailov et al., 2023), a policy trained on preference
pairs against a frozen reference, with no reward model and no sampling.

The policy is a decoder LM (``backbone``: CausalLM or PrefixLM), normally started from an SFT
checkpoint (``init_from``). The reference is the policy as it started:

- with a PEFT method (``model.peft``), the same model with the method switched off
  (``peft.adapters_disabled``): the frozen base, at no extra memory;
- without one, a frozen copy made at construction. It is not saved in checkpoints; a checkpoint
  names its base, and resuming rebuilds the copy from it (``init_from``, or the base a full
  checkpoint recorded).

``precompute_reference: true`` computes the reference's log-probabilities of every training and
validation pair once, before training starts (``on_fit_start``, each process over the whole data
module, keyed by each record's file and line, which the batches carry as ``keys``), and reads them
from memory afterwards: a reference forward less per step. The cache lives for one ``fit``; other
runs compute the reference on the fly.

Checkpoints record the backbone's kind (``model_kind: CausalLM``), so the trained policy loads with
``load_checkpoint`` as a plain LM for generation, export or another run's ``init_from``; the class
path in their hyper-parameters still brings a ``fit --ckpt_path`` back to DPO.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from typing import Any

import torch

from llm_modules.alignment.losses import check_dpo_options, dpo_loss, sequence_logprobs
from llm_modules.alignment.preference import PreferenceModel, evaluating, joined
from llm_modules.alignment.reference import FrozenReference
from llm_modules.config import ModelConfig
from llm_modules.models.prefix import PrefixLM
from llm_modules.peft import adapters_disabled
from llm_modules.registry import ConfigError
import llm_modules.models.finetuning as finetune
from llm_modules.training.memory import MemoryConfig
from llm_modules.training.optim import OptimConfig
from llm_modules.training.stability import StabilityConfig

log = logging.getLogger("llm_modules.alignment")



class DPO(FrozenReference, PreferenceModel):
    """A policy trained with DPO on ``PreferenceDataModule`` batches.

    Args:
        backbone: the policy's LM kind (CausalLM, PrefixLM; that of ``init_from``).
        beta: the KL strength: how far the policy may move from the reference (0.1 is usual).
        loss_type: ``sigmoid`` (DPO) or ``ipo`` (Azar et al., 2023). IPO works on the *summed* log-probs
            of each response, as in the paper; TRL averages them per token, so TRL's ``beta`` for
            responses of ``L`` tokens corresponds to ``beta / L`` here (``losses.dpo_loss``).
        label_smoothing: the assumed share of flipped labels (conservative DPO; sigmoid only).
        precompute_reference: compute the reference log-probs once before training (module docstring).
        The others as for every LanguageModel.

    Logs, for train and val: ``loss``, ``rewards/chosen`` and ``rewards/rejected`` (mean implicit
    rewards ``beta * (log pi - log pi_ref)``), ``rewards/margin`` (their mean difference),
    ``rewards/accuracy`` (share of pairs whose chosen reward is higher), ``logps/chosen`` and
    ``logps/rejected`` (mean policy log-probabilities of the responses).
    """

    progress_metrics = ("rewards/accuracy",)

    def __init__(
        self,
        config: ModelConfig | dict | str | None = None,
        backbone: str = "CausalLM",
        beta: float = 0.1,
        loss_type: str = "sigmoid",
        label_smoothing: float = 0.0,
        precompute_reference: bool = False,
        optim: OptimConfig | None = None,
        memory: MemoryConfig | None = None,
        stability: StabilityConfig | None = None,
        init_from: str | None = None,
        peft: dict | str | None = None,
        peft_checkpoint: str = "adapter",
    ):
        check_dpo_options(beta, loss_type, label_smoothing)
        super().__init__(config, backbone, optim=optim, memory=memory, stability=stability, init_from=init_from,
                         peft=peft, peft_checkpoint=peft_checkpoint)
        self.beta, self.loss_type, self.label_smoothing = float(beta), loss_type, float(label_smoothing)
        self.precompute_reference = bool(precompute_reference)
        self.hparams.update(beta=beta, loss_type=loss_type, label_smoothing=label_smoothing,
                            precompute_reference=precompute_reference)
        if self.peft_method is None:
            self.keep_reference(self.model)
        else:
            with adapters_disabled(self.model):  # refuses, now, a method that cannot be switched off
                pass
        self._reference_cache: dict[str, tuple[float, float]] | None = None

    @property
    def kind(self) -> str:
        """The policy's kind: checkpoints load as that LM (module docstring)."""
        return self._backbone

    # ---- log-probabilities ------------------------------------------------------------------------------

    @torch.no_grad()
    def reference_logprobs(self, both: dict[str, torch.Tensor]) -> torch.Tensor:
        """(2B,) the reference's log-probabilities of the ``joined`` rows, in eval mode (no dropout)."""
        reference = self.reference_model
        switched_off = adapters_disabled(self.model) if reference is None else nullcontext()
        with switched_off, evaluating(reference if reference is not None else self.model) as model:
            logits = model(both["input_ids"], both["attention_mask"], both["prefix_lengths"])
        return sequence_logprobs(logits, both["labels"])

    def _reference_pairs(self, batch: dict[str, Any], both: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        cache = self._reference_cache
        if cache is None:
            return self.reference_logprobs(both).chunk(2)
        keys = batch.get("keys")
        if keys is None:
            raise ConfigError("model.precompute_reference: the batches carry no 'keys' to look the reference "
                              "log-probs up by; use data: llm_modules.data.PreferenceDataModule")
        try:
            values = [cache[key] for key in keys]
        except KeyError as err:
            raise ConfigError(f"model.precompute_reference: no reference log-probs for record {err.args[0]!r}, "
                              "which the data module did not list before training; set precompute_reference: "
                              "false for data that changes during fit") from None
        table = torch.tensor(values, dtype=torch.float32, device=self.device)
        return table[:, 0], table[:, 1]

    def on_fit_start(self) -> None:
        if self.precompute_reference:
            self._reference_cache = self._precompute()

    def on_fit_end(self) -> None:
        self._reference_cache = None

    def _precompute(self) -> dict[str, tuple[float, float]]:
        """Reference log-probs of every pair of the data module's train and val loaders, by key."""
        datamodule = self._datamodule()
        if datamodule is None:
            raise ConfigError("model.precompute_reference needs the data as a data module (trainer.fit(model, "
                              "datamodule=...), or the CLI's data section); set it to false otherwise")
        cache: dict[str, tuple[float, float]] = {}
        loaders = [datamodule.train_dataloader(), datamodule.val_dataloader()]
        for loader in loaders:
            for batch in loader or []:
                batch = self.transfer_batch_to_device(batch, self.device, 0)
                chosen, rejected = self.reference_logprobs(joined(batch)).chunk(2)
                cache.update(zip(batch["keys"], zip(chosen.tolist(), rejected.tolist())))
        log.info(f"dpo: reference log-probs of {len(cache)} pairs computed ahead of training")
        return cache

    # ---- loss -------------------------------------------------------------------------------------------

    def compute_loss(self, batch: dict[str, Any]) -> dict[str, Any]:
        both = joined(batch)
        logits = self(both["input_ids"], both["attention_mask"], both["prefix_lengths"])
        policy_chosen, policy_rejected = sequence_logprobs(logits, both["labels"]).chunk(2)
        ref_chosen, ref_rejected = self._reference_pairs(batch, both)
        out = dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, self.beta, self.loss_type,
                       self.label_smoothing)
        chosen, rejected = out.chosen_rewards, out.rejected_rewards
        metrics = {
            "rewards/chosen": chosen.mean(), "rewards/rejected": rejected.mean(),
            "rewards/margin": (chosen - rejected).mean(), "rewards/accuracy": (chosen > rejected).float().mean(),
            "logps/chosen": policy_chosen.detach().mean(), "logps/rejected": policy_rejected.detach().mean(),
        }
        pairs = {"logps_chosen": policy_chosen.detach(), "logps_rejected": policy_rejected.detach(),
                 "rewards_chosen": chosen, "rewards_rejected": rejected}
        return {"loss": out.loss, "lm_loss": out.loss, "tokens": torch.tensor(len(chosen)), "metrics": metrics,
                "pairs": pairs}

    def logits_and_targets(self, batch):
        """A plain token batch as the backbone's kind reads it (predict, or an SFT-style evaluation)."""
        return PrefixLM.logits_and_targets(self, batch)

    # ---- checkpoints ------------------------------------------------------------------------------------

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """A full checkpoint names no base in its hyper-parameters (it needs none to load), so a run
        resumed from it has built its reference copy from nothing: rebuild it from the base the
        checkpoint recorded."""
        super().on_load_checkpoint(checkpoint)
        recorded = (checkpoint.get(finetune.KEY) or {}).get("init_from")
        if self.reference_model is None or self.init_from is not None:
            return
        if not recorded:
            raise ConfigError("model.init_from: this DPO checkpoint records no base, so its reference (the policy "
                              "as training started) cannot be rebuilt; start DPO from a checkpoint (init_from)")
        self.rebuild_reference(recorded)
