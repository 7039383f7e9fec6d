"""Pipeline schedules by the names users give, run by ``torch.distributed.pipelining``.

Every schedule is PyTorch's own; this module says how many stages each places on a rank and where
(``split.stage_ids``), checks the micro-batch count it needs, and gives it the loss that makes the
micro-batches add up to the batch's mean token loss (``batch_token_loss``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from llm_modules.nn.loss import cross_entropy
from llm_modules.registry import ConfigError
from llm_modules.training.pipeline.stage import LMStage, stage_list

#: targets that take no loss (as ``models.base.IGNORE_INDEX``, which would import Lightning here)
IGNORE_INDEX = -100


@dataclass(frozen=True)
class ScheduleKind:
    """What a schedule needs: its ``torch.distributed.pipelining`` class name, stages per rank
    (``virtual``: exactly ``fixed_virtual`` when set, else at least ``min_virtual``, by default
    ``default_virtual``), and whether it needs as many micro-batches as ranks.

    Not offered: torch's V-shaped schedules (ZBV zero bubble, DualPipeV), whose forward-only run
    (validation) fails in torch 2.13 where two adjacent stages share a rank."""

    torch_class: str
    min_virtual: int = 1
    default_virtual: int = 1
    fixed_virtual: int | None = None
    microbatches_at_least_ranks: bool = False

    @property
    def multi(self) -> bool:
        """Whether a rank may hold several stages (a multi-stage schedule class)."""
        return max(self.min_virtual, self.fixed_virtual or 1) > 1


#: the schedules, by the name a user gives (``schedule:``)
SCHEDULES: dict[str, ScheduleKind] = {
    "gpipe": ScheduleKind("ScheduleGPipe", fixed_virtual=1),
    "1f1b": ScheduleKind("Schedule1F1B", fixed_virtual=1, microbatches_at_least_ranks=True),
    "interleaved-1f1b": ScheduleKind("ScheduleInterleaved1F1B", min_virtual=2, default_virtual=2),
    "interleaved-zero-bubble": ScheduleKind(
        "ScheduleInterleavedZeroBubble", min_virtual=2, default_virtual=2, microbatches_at_least_ranks=True),
}


def schedule_kind(schedule: str) -> ScheduleKind:
    if schedule not in SCHEDULES:
        import difflib

        close = difflib.get_close_matches(schedule, SCHEDULES, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"pipeline schedule {schedule!r} is not one of {', '.join(SCHEDULES)}{hint}")
    return SCHEDULES[schedule]


def stages_per_rank(schedule: str, virtual: int | None) -> int:
    """The stages per rank ``schedule`` runs: ``virtual`` checked against it, or its default."""
    kind = schedule_kind(schedule)
    if virtual is None:
        return kind.fixed_virtual or kind.default_virtual
    if kind.fixed_virtual is not None and virtual != kind.fixed_virtual:
        raise ConfigError(f"virtual_stages: schedule {schedule} runs {kind.fixed_virtual} stage per rank; set "
                          f"virtual_stages: {kind.fixed_virtual} (or leave it out), or use an interleaved schedule")
    if virtual < kind.min_virtual:
        raise ConfigError(f"virtual_stages: schedule {schedule} needs at least {kind.min_virtual} stages per rank, "
                          f"got {virtual}; set virtual_stages: {kind.min_virtual} (or leave it out)")
    return virtual


def check_schedule(schedule: str, microbatches: int, pp: int, virtual: int | None = None) -> int:
    """Refuse a schedule name, stage count or micro-batch count that cannot run ``pp`` ranks;
    return the stages per rank."""
    kind = schedule_kind(schedule)
    virtual = stages_per_rank(schedule, virtual)
    if microbatches < 1:
        raise ConfigError(f"pipeline microbatches must be at least 1, got {microbatches}")
    if kind.microbatches_at_least_ranks and microbatches < pp:
        raise ConfigError(
            f"schedule {schedule} needs at least as many microbatches as pipeline ranks ({pp}), got {microbatches}; "
            f"raise microbatches to {pp} or use schedule gpipe"
        )
    if schedule == "interleaved-1f1b":  # its rounds: max(1, m // pp) must divide m
        rounds = max(1, microbatches // pp)
        if microbatches % rounds:
            raise ConfigError(
                f"schedule interleaved-1f1b needs microbatches that split into rounds of {pp} (the ranks): "
                f"{microbatches} is not a multiple of {rounds}; use a multiple of {pp} or fewer than {pp}"
            )
    return virtual


def batch_token_loss(logits: torch.Tensor, targets: torch.Tensor, tokens: float) -> torch.Tensor:
    """A micro-batch's share of the batch's mean token cross-entropy: its summed token loss over
    ``tokens``, the number of targets in the whole batch (``steps`` passes it). The shares add
    up to the batch's mean, so the schedule must not average them again (``scale_grads=False``); a
    mean per micro-batch would weigh a micro-batch with few targets (a short answer, few masked
    tokens) as much as one with many."""
    count = (targets != IGNORE_INDEX).sum()
    if not count:  # no target in this micro-batch: a zero that still reaches every logit
        return logits.sum() * 0.0
    return cross_entropy(logits, targets, IGNORE_INDEX) * (count / tokens)


def torch_stages(stages: Sequence[LMStage], device: torch.device | str = "cpu", group=None) -> list:
    """``stages`` as ``torch.distributed.pipelining`` runs them on this rank (``group``: the
    pipeline's process group, the default one when None)."""
    from torch.distributed.pipelining import PipelineStage

    return [PipelineStage(s, s.index, s.num_stages, torch.device(device), group=group) for s in stages]


def schedule_for(stages, schedule: str, microbatches: int):
    """The ``torch.distributed.pipelining`` schedule ``schedule`` over this rank's ``torch_stages``
    (a list; a single stage is accepted too), ``microbatches`` micro-batches per step, with
    ``batch_token_loss`` as its ``loss_fn``."""
    import torch.distributed.pipelining as pipelining

    stages = stage_list(stages)
    ranks = stages[0].group_size
    check_schedule(schedule, microbatches, ranks, len(stages))
    kind = SCHEDULES[schedule]
    cls = getattr(pipelining, kind.torch_class, None) or getattr(pipelining.schedules, kind.torch_class)
    target = stages if kind.multi else stages[0]
    return cls(target, n_microbatches=microbatches, loss_fn=batch_token_loss, scale_grads=False)


def pipeline_schedule(
    stages, schedule: str, microbatches: int, device: torch.device | str = "cpu", group=None,
):
    """``schedule_for(torch_stages(stages, device, group), schedule, microbatches)``: what a rank runs."""
    stages = stage_list(stages)
    return schedule_for(torch_stages(stages, device, group), schedule, microbatches)
