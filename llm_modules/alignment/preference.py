"""What the modules trained on preference pairs share (RewardModel, DPO): a decoder backbone of a
chosen kind, one forward over the chosen and the rejected rows together, and their logging.

A preference batch (``data.PreferenceDataModule``) holds ``chosen_*`` and ``rejected_*`` rows
(``input_ids``, ``attention_mask``, ``labels``) of the same prompts, and ``prefix_lengths`` for a
PrefixLM backbone. ``joined`` stacks them into one batch of 2B rows, chosen first, so the model
runs once per step; a subclass's ``compute_loss`` returns ``loss`` (and ``lm_loss``, the same
number, which the stability guard judges), ``tokens`` and ``metrics``: detached figures logged as
``train/NAME`` every step and ``val/NAME`` / ``test/NAME`` per pass.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from llm_modules.config import ModelConfig
from llm_modules.data.preferences import SIDES
from llm_modules.kinds import DECODERS
from llm_modules.models.base import IGNORE_INDEX, LanguageModel
from llm_modules.nn.lm import DecoderLM
from llm_modules.registry import ConfigError

BACKBONES = DECODERS  # the one-stack generating kinds (llm_modules.kinds)


def check_backbone(backbone: str) -> str:
    if backbone not in BACKBONES:
        raise ConfigError(f"model.backbone={backbone!r}: alignment trains decoder LMs; choose one of "
                          f"{', '.join(BACKBONES)} (the kind of model.init_from)")
    return backbone


def joined(batch: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The chosen rows then the rejected rows as one batch (2B, T), right-padded to one width."""
    missing = [f"{side}_{field}" for side in SIDES for field in ("input_ids", "labels") if f"{side}_{field}" not in batch]
    if missing:
        raise ConfigError(f"the batch lacks {', '.join(missing)}: alignment modules train on preference pairs; "
                          "use data: llm_modules.data.PreferenceDataModule")
    width = max(batch[f"{side}_input_ids"].shape[1] for side in SIDES)

    def both(field: str, fill: int) -> torch.Tensor:
        rows = []
        for side in SIDES:
            x = batch.get(f"{side}_{field}")
            if x is None:  # no mask: every token is real
                x = torch.ones_like(batch[f"{side}_input_ids"])
            rows.append(F.pad(x, (0, width - x.shape[1]), value=fill))
        return torch.cat(rows)

    out = {"input_ids": both("input_ids", 0), "attention_mask": both("attention_mask", 0),
           "labels": both("labels", IGNORE_INDEX)}
    prefix = batch.get("prefix_lengths")
    out["prefix_lengths"] = None if prefix is None else torch.cat([prefix, prefix])
    return out


@contextmanager
def evaluating(module: nn.Module) -> Iterator[nn.Module]:
    """``module`` in eval mode (no dropout) for the block, each submodule's own mode restored after."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for m, training in modes:
            m.training = training


class PreferenceModel(LanguageModel):
    """Base of RewardModel and DPO: a ``DecoderLM`` of kind ``backbone`` (CausalLM, or PrefixLM: the
    prompt read bidirectionally), trained on preference batches.

    ``backbone`` must be the kind that ``init_from`` holds. Subclasses declare every constructor
    argument themselves (the CLI reads their signatures) and pass the LanguageModel ones on.
    """

    base_kind_fix = "set model.init_args.backbone: {kind}"

    def __init__(self, config: ModelConfig | dict | str | None = None, backbone: str = "CausalLM", **options):
        # Read by base_kind inside LanguageModel.__init__ (init_from's kind is checked against it).
        self._backbone = check_backbone(backbone)
        super().__init__(config, **options)
        self.hparams["backbone"] = backbone
        # Generation metrics need references, which preference pairs are not; the constructors do not
        # take the option, so checkpoints must not name it (fit/validate --ckpt_path pass it back).
        self.hparams.pop("evaluation", None)

    @property
    def base_kind(self) -> str:
        return self._backbone

    def build_model(self, config: ModelConfig) -> nn.Module:
        return DecoderLM(config, prefix=self._backbone == "PrefixLM")

    def forward(self, input_ids, attention_mask=None, prefix_lengths=None, document_ids=None):
        """What the torch model returns for these rows (DPO: logits; RewardModel: values)."""
        return self.model(input_ids, attention_mask, prefix_lengths, document_ids=document_ids)

    # ---- steps ------------------------------------------------------------------------------------------

    def batch_rows(self, batch) -> torch.Tensor:
        if "chosen_input_ids" not in batch:
            return super().batch_rows(batch)
        return joined(batch)["input_ids"]

    def log_training(self, out: dict[str, Any], loss: torch.Tensor) -> None:
        self.log("train/loss", loss, prog_bar=True)
        for name, value in out["metrics"].items():
            self.log(f"train/{name}", value)

    def validation_step(self, batch, batch_idx):
        self._log_pass(batch, "val")

    def test_step(self, batch, batch_idx):
        self._log_pass(batch, "test")

    def _log_pass(self, batch, split: str) -> None:
        out = self.compute_loss(batch)
        pairs = int(batch["chosen_input_ids"].shape[0])
        self.log(f"{split}/loss", out["loss"], prog_bar=True, sync_dist=True, batch_size=pairs)
        for name, value in out["metrics"].items():
            self.log(f"{split}/{name}", value, prog_bar=name in self.progress_metrics, sync_dist=True,
                     batch_size=pairs)
        if self._trainer is not None and self.trainer.sanity_checking:
            figures = {"loss": out["loss"].detach(), **out["metrics"]}
            self._sanity_sums.append((pairs, {name: float(value) for name, value in figures.items()}))

    def on_validation_epoch_start(self) -> None:
        self._sanity_sums: list[tuple[int, dict[str, float]]] = []

    def on_validation_epoch_end(self) -> None:
        """The sanity-check pass (the whole validation set with ``num_sanity_val_steps: -1``) is
        written to the loggers at step 0, as the other kinds do with their loss: the model as it
        starts is the figure training is compared against."""
        if not self.trainer.sanity_checking or self.global_step != 0 or not self.trainer.loggers:
            return
        if not self._sanity_sums:  # every process ran the same number of sanity batches
            return
        names = sorted(self._sanity_sums[0][1])
        sums = torch.tensor([[n * figures[name] for name in names] + [n] for n, figures in self._sanity_sums],
                            dtype=torch.float64, device=self.device).sum(0)
        sums = self.trainer.strategy.reduce(sums, reduce_op="sum")
        metrics = {f"val/{name}": float(total / sums[-1]) for name, total in zip(names, sums[:-1])}
        for logger in self.trainer.loggers:
            logger.log_metrics(metrics, step=0)

    #: metrics shown on the progress bar during validation
    progress_metrics: tuple[str, ...] = ()

    def predict_step(self, batch, batch_idx):
        """Per-pair figures of a preference batch (``compute_loss``'s ``pairs``); other batches as
        the backbone's kind predicts them."""
        if "chosen_input_ids" in batch:
            return self.compute_loss(batch)["pairs"]
        return super().predict_step(batch, batch_idx)
