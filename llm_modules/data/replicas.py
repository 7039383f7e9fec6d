"""Which share of the data a process reads: the data-parallel group's size and this process's rank in it.

Used by the data modules (to split the data), the throughput monitor and the LightningModule (to
count tokens over the replicas); it reads only the trainer's strategy, so it sits in data/, below
training/ and models/, which import it.
"""

from __future__ import annotations


def data_parallel_split(trainer) -> tuple[int, int]:
    """(replicas, rank) for splitting the data: the strategy's data-parallel group, else (1, 0).

    Under tensor parallelism several processes work on one batch together, so they must read the
    same samples: the data is split over the data-parallel group only (the strategy's sampler
    arguments say which), not over all processes as with plain DDP.
    """
    if trainer is None:
        return 1, 0
    kwargs = getattr(trainer.strategy, "distributed_sampler_kwargs", None) or {}
    return int(kwargs.get("num_replicas", trainer.world_size)), int(kwargs.get("rank", trainer.global_rank))
