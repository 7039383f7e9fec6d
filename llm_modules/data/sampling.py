"""Which blocks an epoch visits, in what order, across mixture sources and processes, resumably."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from torch.utils.data import DistributedSampler


def largest_remainder(weights: Sequence[float], total: int) -> np.ndarray:
    """Integer counts summing to ``total`` in proportion to ``weights``."""
    w = np.asarray(weights, dtype=np.float64)
    exact = w / w.sum() * total
    counts = np.floor(exact).astype(np.int64)
    short = total - counts.sum()
    counts[np.argsort(-(exact - counts), kind="stable")[:short]] += 1
    return counts


def mixture_order(block_counts: Sequence[int], weights: Sequence[float], total: int, seed: int,
                  epoch: int) -> np.ndarray:
    """The global block indices of one epoch: a function of (seed, epoch) alone.

    Source c gets ``total * weight_c`` draws (exactly, by largest remainder); its draws walk through
    fresh permutations of its blocks, so a block repeats only after all others of that source have
    been seen. The sources are interleaved by a seeded permutation of the labels.
    """
    rng = np.random.default_rng([seed, epoch])
    draws = largest_remainder(weights, total)
    labels = np.repeat(np.arange(len(block_counts)), draws)
    rng.shuffle(labels)
    base = np.concatenate([[0], np.cumsum(block_counts)])
    order = np.empty(total, dtype=np.int64)
    for c, need in enumerate(draws):
        if need == 0:
            continue
        reps = -(-int(need) // int(block_counts[c]))
        picks = np.concatenate([rng.permutation(block_counts[c]) for _ in range(reps)])[:need]
        order[labels == c] = base[c] + picks
    return order


class ResumableSampler(DistributedSampler):
    """Per-epoch seeded order with a resumable position; also splits the order across ranks.

    It is a DistributedSampler so that Lightning does not wrap it in another one (which would reshuffle
    and lose the resume position); with one process it is simply the whole order.
    ``samples_consumed`` counts *global* samples (all ranks) of the current epoch; the data module
    advances it as training batches reach the model.
    """

    def __init__(self, order_fn: Callable[[int], np.ndarray], num_samples: int,
                 num_replicas: int = 1, rank: int = 0):
        super().__init__(range(num_samples), num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=True)
        self.order_fn, self.total = order_fn, num_samples
        self.epoch = 0
        self.active_epoch = 0
        self.samples_consumed = 0
        self._resume: tuple[int, int] | None = None

    def __len__(self) -> int:
        return self.total // self.num_replicas

    def __iter__(self):
        epoch = self.epoch
        self.epoch += 1  # without Lightning's set_epoch, consecutive iterations are consecutive epochs
        start = 0
        if self._resume is not None and self._resume[0] == epoch:
            start = self._resume[1]
        self._resume = None if self._resume is None or self._resume[0] <= epoch else self._resume
        self.active_epoch, self.samples_consumed = epoch, start
        remaining = self.order_fn(epoch)[start:]
        per_rank = len(remaining) // self.num_replicas
        mine = remaining[self.rank::self.num_replicas][:per_rank]
        return iter(mine.tolist())

    def resume(self, epoch: int, samples_consumed: int) -> None:
        """Continue at ``epoch`` after skipping ``samples_consumed`` (global) samples of it."""
        self.epoch = self.active_epoch = epoch
        self.samples_consumed = samples_consumed
        self._resume = (epoch, samples_consumed)

    def position(self) -> tuple[int, int]:
        """(epoch, samples consumed), with a finished epoch reported as the start of the next."""
        if self.samples_consumed >= len(self) * self.num_replicas:
            return self.active_epoch + 1, 0
        return self.active_epoch, self.samples_consumed
