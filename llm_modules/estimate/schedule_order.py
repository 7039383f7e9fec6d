"""What a pipeline schedule does, in order, read from ``torch.distributed.pipelining`` itself.

An order is, per rank, its compute actions: forward ``F``, full backward ``B``, or the
zero-bubble split into backward-for-input ``I`` and backward-for-weights ``W``, each of one
micro-batch at one stage. Torch's multi-stage schedules (interleaved 1F1B, the zero-bubble ones)
run from the ``pipeline_order`` their constructor builds from the sizes alone: the estimator
builds the schedule over stand-ins for the stages (the few attributes the constructors read: no
process group, no model) and reads it, so the in-flight micro-batches and the bubble are those
of the schedule that runs. The single-stage GPipe and 1F1B run a loop instead
(``_step_microbatches``; their informational ``_get_pipeline_order`` is not what runs: torch
2.13's 1F1B one is a micro-batch off on the last rank), so their order is that loop's: GPipe
every forward then every backward, 1F1B ``min(m, p - s)`` forwards on stage ``s``, then a
backward and a forward in turn, then the remaining backwards.

- ``in_flight``: the most micro-batches each stage holds activations of at once: from its
  forward until its backward frees them (``B``, or ``W``: torch's ``I`` keeps the graph for
  ``W``). GPipe gives ``m`` on every stage, 1F1B ``min(m, p - s)`` on stage ``s``.
- ``simulate``: each rank runs its actions in order, each as soon as its inputs exist (a
  forward after the previous stage's forward of that micro-batch, a backward after the next
  stage's), with a stage's forward taking 1 unit, ``I`` and ``W`` 1 each and ``B`` 2 (the
  zero-bubble paper's F = B = W); communication is free. The idle fraction of each rank is the
  simulated bubble: for GPipe and 1F1B exactly (p-1)/(m+p-1).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

#: compute actions (torch's _ComputationType values); the others (sends, receives, gradient
#: reductions, FSDP unshards) take no compute and are skipped
COMPUTE = ("F", "B", "I", "W")
#: relative cost of a stage's action, in forwards (Qi et al. 2023, "Zero Bubble Pipeline Parallelism")
COST = {"F": 1.0, "B": 2.0, "I": 1.0, "W": 1.0}


@dataclass(frozen=True)
class Action:
    op: str  # F, B, I or W
    stage: int
    microbatch: int

    def __str__(self) -> str:
        return f"{self.stage}{self.op}{self.microbatch}"


def held_stages(schedule: str, rank: int, pp: int, virtual: int) -> list[int]:
    """The stages pipeline rank ``rank`` holds under ``schedule``: ``split.stage_ids``' loops, or
    ranks ``r`` and ``2 pp - 1 - r`` for a schedule whose kind declares a V placement."""
    from llm_modules.training.pipeline.schedules import SCHEDULES
    from llm_modules.training.pipeline.split import stage_ids

    if getattr(SCHEDULES[schedule], "placement", "loop") == "v":
        return [rank, 2 * pp - 1 - rank]
    return stage_ids(rank, pp, virtual)


def _stand_ins(schedule: str, pp: int, virtual: int, rank: int = 0) -> list:
    """Objects with the attributes torch's schedule constructors read from ``PipelineStage``s."""
    from types import SimpleNamespace

    from torch import nn

    n = pp * virtual
    return [SimpleNamespace(num_stages=n, group_size=pp, group_rank=rank, stage_index=i, is_first=i == 0,
                            is_last=i == n - 1, stage_index_to_group_rank=None, submod=nn.Module(), group=None)
            for i in held_stages(schedule, rank, pp, virtual)]


@lru_cache(maxsize=64)
def schedule_order(schedule: str, pp: int, microbatches: int, virtual: int) -> dict[int, tuple[Action, ...]]:
    """Rank -> its compute actions in the order ``schedule`` runs them (checked first, with the
    runtime's messages: ``training.pipeline.check_schedule``)."""
    import torch.distributed.pipelining as pipelining

    from llm_modules.training.pipeline.schedules import SCHEDULES, check_schedule

    virtual = check_schedule(schedule, microbatches, pp, virtual)
    kind = SCHEDULES[schedule]
    if not kind.multi:
        return {rank: _single_stage_loop(schedule, rank, pp, microbatches) for rank in range(pp)}
    cls = getattr(pipelining, kind.torch_class, None) or getattr(pipelining.schedules, kind.torch_class)
    stages = _stand_ins(schedule, pp, virtual)
    try:
        made = _compute_only(cls)(stages if kind.multi else stages[0], n_microbatches=microbatches,
                                  loss_fn=lambda *a: None)
    except ValueError as err:  # a count torch's constructor refuses (rounds of pp micro-batches)
        from llm_modules.registry import ConfigError

        raise ConfigError(f"pipeline schedule {schedule} cannot run {microbatches} micro-batches on {pp} ranks "
                          f"(torch.distributed.pipelining: {err}); give --microbatches a multiple of {pp}") from None
    order = {}
    for rank, actions in made.pipeline_order.items():
        order[rank] = tuple(
            Action(str(a.computation_type.value if hasattr(a.computation_type, "value") else a.computation_type),
                   a.stage_index, a.microbatch_index)
            for a in actions if a is not None and str(getattr(a.computation_type, "value", a.computation_type))
            in COMPUTE
        )
    return order


@lru_cache(maxsize=None)
def _compute_only(cls: type) -> type:
    """``cls`` whose constructor stops at its compute order: torch's multi-stage schedules end
    their constructor by lowering ``pipeline_order`` into send, receive, unshard and gradient
    reduction actions (``_prepare_schedule_with_comms``), most of their construction time, which
    the estimator does not read. The subclass keeps that method's check of the order and its stage
    mapping, and leaves ``pipeline_order`` as the constructor built it."""

    def check_only(self, actions, format="compute_only"):
        self._validate_and_set_stage_mapping(actions)

    return type(cls.__name__, (cls,), {"_prepare_schedule_with_comms": check_only, "__module__": __name__})


def _single_stage_loop(schedule: str, stage: int, pp: int, m: int) -> tuple[Action, ...]:
    """The actions of torch's ``ScheduleGPipe`` / ``Schedule1F1B._step_microbatches`` on ``stage``."""
    forwards = [Action("F", stage, i) for i in range(m)]
    backwards = [Action("B", stage, i) for i in range(m)]
    if schedule == "gpipe":
        return tuple(forwards + backwards)
    warmup = min(m, pp - stage)
    actions = forwards[:warmup]
    for i in range(m):
        actions.append(backwards[i])
        if warmup + i < m:
            actions.append(forwards[warmup + i])
    return tuple(actions)


def in_flight(order: dict[int, tuple[Action, ...]]) -> dict[int, int]:
    """Stage -> the most micro-batches whose activations it holds at once."""
    alive: dict[int, int] = {}
    most: dict[int, int] = {}
    for actions in order.values():
        for a in actions:
            if a.op == "F":
                alive[a.stage] = alive.get(a.stage, 0) + 1
                most[a.stage] = max(most.get(a.stage, 0), alive[a.stage])
            elif a.op in ("B", "W"):
                alive[a.stage] -= 1
    return dict(sorted(most.items()))


def simulate(order: dict[int, tuple[Action, ...]], stage_cost: dict[int, float] | None = None) -> dict[int, float]:
    """Rank -> its idle fraction of the step when every rank runs its actions in order as soon as
    their inputs exist (module doc); ``stage_cost``: a stage's forward time (default 1 / stages
    per rank, so a rank's work per micro-batch is the same whatever its stage count)."""
    stages = {a.stage for actions in order.values() for a in actions}
    last = max(stages)
    per_rank = max(1, len(stages) // max(1, len(order)))
    cost = stage_cost or dict.fromkeys(stages, 1.0 / per_rank)
    done: dict[tuple[str, int, int], float] = {}  # (kind, stage, microbatch) -> finish time
    clock = dict.fromkeys(order, 0.0)
    busy = dict.fromkeys(order, 0.0)
    position = dict.fromkeys(order, 0)

    def ready(a: Action) -> float | None:
        """When ``a``'s inputs exist (None: not yet)."""
        if a.op == "F":
            needs = [("F", a.stage - 1, a.microbatch)] if a.stage else []
        elif a.op == "W":
            needs = [("I", a.stage, a.microbatch)]
        else:  # B or I: the gradient from the next stage, and this stage's forward
            needs = [("F", a.stage, a.microbatch)] + ([("I", a.stage + 1, a.microbatch)] if a.stage < last else [])
        times = [done.get(n) for n in needs]
        return None if any(t is None for t in times) else max(times, default=0.0)

    remaining = sum(len(actions) for actions in order.values())
    while remaining:
        progressed = False
        for rank, actions in order.items():
            while position[rank] < len(actions):
                a = actions[position[rank]]
                at = ready(a)
                if at is None:
                    break
                length = COST[a.op] * cost[a.stage]
                finish = max(clock[rank], at) + length
                clock[rank], busy[rank] = finish, busy[rank] + length
                done[(a.op, a.stage, a.microbatch)] = finish
                if a.op == "B":  # a full backward also gives what a backward-for-input would
                    done[("I", a.stage, a.microbatch)] = finish
                position[rank] += 1
                remaining -= 1
                progressed = True
        if not progressed:
            raise RuntimeError("the pipeline order deadlocks: " + ", ".join(
                str(order[r][position[r]]) for r in order if position[r] < len(order[r])))
    end = max(clock.values())
    return {rank: 1 - busy[rank] / end for rank in order}
