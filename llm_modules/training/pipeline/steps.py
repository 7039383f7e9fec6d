"""A training or validation step of this rank's pipeline stages, and what a step needs around the
schedule: data-parallel sharding of the stages and gradient clipping over the whole pipeline."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from llm_modules.registry import ConfigError
from llm_modules.training.pipeline.schedules import IGNORE_INDEX
from llm_modules.training.pipeline.stage import LMStage, stage_list

#: whether a step asks the schedule for the last stage's outputs (its logits): no, the losses are
#: all a step needs, and torch would keep every micro-batch's logits until the next step and
#: concatenate them (``estimate.pipeline`` counts them when this is True)
RETURN_OUTPUTS = False


def global_grad_norm(modules: Sequence[nn.Module], group=None) -> torch.Tensor:
    """The 2-norm over the gradients of the whole pipelined model: this rank's stages' squared
    norm (over data/tensor-parallel shards too, when the gradients are DTensors) summed over the
    pipeline ``group``. The same value on every rank."""
    import torch.distributed as dist

    grads = [p.grad for m in modules for p in m.parameters() if p.grad is not None]
    local = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros(())
    if hasattr(local, "full_tensor"):  # a DTensor: its norm is partial over the shards
        local = local.full_tensor()
    squared = local.double().pow(2)
    dist.all_reduce(squared, group=group)
    return squared.sqrt().to(local.dtype)


def clip_grad_norm(stages, max_norm: float, group=None) -> torch.Tensor:
    """Clip the gradients of the whole pipelined model to ``max_norm``, as ``clip_grad_norm_`` does
    on one process: every stage scales its own by the factor of ``global_grad_norm``. Returns
    that norm."""
    stages = stage_list(stages)
    total = global_grad_norm(stages, group)
    params = [p for s in stages for p in s.parameters() if p.grad is not None]
    torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
    return total


def shard_stage(stage: LMStage, dp_mesh) -> LMStage:
    """Shard ``stage`` over the data-parallel ``dp_mesh`` (FSDP2 ``fully_shard``: each block its own
    unit, then the stage for what remains; parameters kept gathered between forward and backward,
    as pipelining runs several micro-batches' forwards before their backwards). FSDP2 averages
    gradients over the replicas, which ``train_step(dp_group=...)`` counts on."""
    from torch.distributed.fsdp import fully_shard

    for block in stage.stack.layers.values():
        fully_shard(block, mesh=dp_mesh, reshard_after_forward=False)
    fully_shard(stage, mesh=dp_mesh, reshard_after_forward=False)
    return stage


def train_step(
    schedule, stages, optimizer: torch.optim.Optimizer, input_ids, targets, *,
    max_grad_norm: float | None = None, group=None, dp_group=None, **inputs,
) -> torch.Tensor | None:
    """One optimizer step over a whole batch, which every rank of the pipeline passes whole
    (``inputs``: the batch's ``attention_mask``, ``prefix_lengths``, ``token_type_ids``,
    ``document_ids``), cut into the schedule's micro-batches; with ``max_grad_norm``, gradients
    clipped across the stages of the pipeline ``group`` first (``clip_grad_norm``).

    ``dp_group``: this stage's data-parallel replicas (``shard_stage``), each given its own part
    of the global batch; the loss is then normalized by the global batch's target count, so the
    step is one process's over the global batch. Returns the batch's mean token loss on the rank
    holding the last stage (the global batch's with ``dp_group``), None elsewhere."""
    optimizer.zero_grad(set_to_none=True)
    loss = run_schedule(schedule.step, stages, input_ids, targets, inputs, dp_group)
    if max_grad_norm is not None:
        clip_grad_norm(stages, max_grad_norm, group)
    optimizer.step()
    return loss


@torch.no_grad()
def eval_step(schedule, stages, input_ids, targets, dp_group=None, **inputs) -> torch.Tensor | None:
    """The batch's mean token loss without gradients (validation): forward chunks only, the same
    micro-batches and loss as ``train_step``; on the last stage's rank, None elsewhere."""
    return run_schedule(schedule.eval, stages, input_ids, targets, inputs, dp_group)


def run_schedule(step, stages, input_ids, targets, inputs: dict, dp_group=None) -> torch.Tensor | None:
    """``schedule.step`` or ``schedule.eval`` over the batch; the last stage's summed shares.

    With data-parallel replicas, each micro-batch's share is over the global target count divided
    by the replicas (FSDP2 averages the gradients: the average of the replicas' sums is then the
    global mean's gradient), and the replicas' losses are summed and divided the same way."""
    import torch.distributed as dist

    stages = stage_list(stages)
    count = (targets != IGNORE_INDEX).sum()
    replicas = 1
    if dp_group is not None:
        dist.all_reduce(count, group=dp_group)
        replicas = dist.get_world_size(dp_group)
    if not count:
        raise ConfigError("a pipeline batch has no target token (every label is ignored); check the data")
    tokens = {"tokens": count.item() / replicas}
    inputs = {name: value for name, value in inputs.items() if value is not None}
    losses: list[torch.Tensor] = []
    first = (input_ids,) if any(s.is_first for s in stages) else ()
    step(*first, target=targets, losses=losses, loss_kwargs=tokens, return_outputs=RETURN_OUTPUTS, **inputs)
    if not any(s.is_last for s in stages):
        return None
    loss = torch.stack([loss.detach() for loss in losses]).sum()
    if dp_group is not None:  # every rank of a dp group holds the same stages: the last stages add up
        dist.all_reduce(loss, group=dp_group)
        loss = loss / replicas
    return loss
