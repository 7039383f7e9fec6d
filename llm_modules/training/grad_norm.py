"""The total gradient norm, right for replicated and for sharded parameters (``train/grad_norm``)."""

from __future__ import annotations

import functools
import math
import warnings

import torch


def grad_norm(lm) -> torch.Tensor | None:
    """Total 2-norm of the gradients (fp32 scalar, fp64 for fp64 gradients), correct for replicated and
    sharded parameters.

    Plain tensors (single process, DDP: gradients already averaged) are local and whole. DTensor
    gradients (FSDP2 / tensor parallel under ModelParallelStrategy) are norm-reduced over their mesh
    with ``full_tensor()``, one collective per mesh, in parameter order so every rank issues the same
    ones. FSDP1 (FSDPStrategy) holds local shards of flat parameters in plain tensors, so a local
    norm would be silently wrong: its root module's ``clip_grad_norm_`` with an infinite bound gives
    the global norm and scales by 1. None when no parameter has a gradient. Plain gradients are
    normed in fp32 at least (``_foreach_norm(dtype=...)``, what ``get_total_norm`` runs minus the dtype).
    Under pipeline parallelism the squares are summed over the pipeline's ranks.
    """
    from lightning.pytorch.strategies import FSDPStrategy
    from torch.distributed.tensor import DTensor

    strategy = lm.trainer.strategy
    if isinstance(strategy, FSDPStrategy):
        from torch.distributed.fsdp import FullyShardedDataParallel

        if isinstance(strategy.model, FullyShardedDataParallel):
            return strategy.model.clip_grad_norm_(math.inf).float()
        warnings.warn("train/grad_norm is not computed: FSDPStrategy without a root FSDP module (the model was "
                      "wrapped by hand) leaves no way to reduce the sharded norm; non-finite gradients go unchecked")
        return None
    plain: list[torch.Tensor] = []
    meshes: dict[int, list[torch.Tensor]] = {}
    for p in lm.parameters():
        if p.grad is None:
            continue
        if isinstance(p.grad, DTensor):
            meshes.setdefault(id(p.grad.device_mesh), []).append(p.grad)
        else:
            plain.append(p.grad)
    squares = []
    groups: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
    for grad in plain:
        # in fp32 at least, whatever the gradients' dtype: an fp16 norm overflows at 65504 with every entry
        # finite; fp64 gradients (precision "64-true") keep their own precision
        groups.setdefault((grad.device, torch.promote_types(grad.dtype, torch.float32)), []).append(grad)
    for (_, dtype), grads in groups.items():
        squares.append(torch.stack(torch._foreach_norm(grads, 2.0, dtype=dtype)).square().sum())
    for grads in meshes.values():
        norm = torch.nn.utils.get_total_norm(grads)
        norm = norm.full_tensor() if isinstance(norm, DTensor) else norm
        squares.append(norm.float().square())
    group = getattr(lm.pipeline, "group", None) if getattr(lm, "pipeline", None) is not None else None
    if not squares and group is None:
        return None
    if not squares:  # a pipeline rank whose stages have no gradient still takes part in the sum
        squares.append(torch.zeros((), device=lm.device))
    widest = functools.reduce(torch.promote_types, (s.dtype for s in squares))
    total = torch.stack([s.to(squares[0].device, widest) for s in squares]).sum()
    if group is not None:  # each pipeline rank holds other parameters: the squares add up over the stages
        torch.distributed.all_reduce(total, group=group)
    return total.sqrt()
