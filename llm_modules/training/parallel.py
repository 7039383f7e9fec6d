"""Tensor parallelism and FSDP2 sharding for ModelParallelStrategy. (Skeleton: filled in by the scale-out work.)"""

from __future__ import annotations


def parallelize(lm) -> None:
    """Apply the tensor-parallel plan and fully_shard when the strategy gives the module a device mesh."""
