"""The whole model's state dict from the pipeline's stages, on one rank, without pickling."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

import torch
from torch import nn


def gather_state_dict(
    stages: nn.Module | Sequence[nn.Module] | Mapping[str, torch.Tensor], group=None, dst: int = 0,
) -> dict[str, torch.Tensor] | None:
    """The whole model's state dict on pipeline rank ``dst`` of ``group`` (None on the others):
    every rank's tensors (its ``stages``' state dicts, or a mapping of full tensors) under the
    model's own names, so it loads into the unsplit model. Each rank sends a JSON header (names,
    shapes, dtypes) and then its tensors: nothing is pickled. A tensor that several ranks hold
    is taken once."""
    import torch.distributed as dist

    if isinstance(stages, Mapping):
        own = dict(stages)
    else:
        own = {}
        for stage in [stages] if isinstance(stages, nn.Module) else stages:
            own.update(stage.state_dict())
    own = {name: value.detach().contiguous() for name, value in own.items()}
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    if rank != dst:
        header = json.dumps([[name, list(v.shape), str(v.dtype).removeprefix("torch.")] for name, v in own.items()])
        data = torch.frombuffer(bytearray(header.encode()), dtype=torch.uint8)
        dist.send(torch.tensor([data.numel()]), group=group, group_dst=dst)
        dist.send(data, group=group, group_dst=dst)
        for value in own.values():
            dist.send(value, group=group, group_dst=dst)
        return None
    full = dict(own)
    for src in (r for r in range(world) if r != dst):
        size = torch.zeros(1, dtype=torch.long)
        dist.recv(size, group=group, group_src=src)
        data = torch.empty(int(size), dtype=torch.uint8)
        dist.recv(data, group=group, group_src=src)
        for name, shape, dtype in json.loads(bytes(data.tolist()).decode()):
            value = torch.empty(shape, dtype=getattr(torch, dtype))
            dist.recv(value, group=group, group_src=src)
            full.setdefault(name, value)
    return full
