"""GPT-3-style batch-size ramp-up: small batches first, growing linearly to the full batch.

Early in training the gradient is dominated by a few large, coherent directions, so a small batch
estimates it nearly as well as a large one at a fraction of the tokens; later the noise matters and
the full batch pays off (GPT-3 ramps over its first 4-12 billion tokens; Megatron's
``--rampup-batch-size start increment samples`` is the same idea).

``batch_ramp: {start: 2, steps: 100, increment: 2}`` with ``batch_size: 8``: the per-process batch
starts at 2 blocks and grows in steps of 2 (2, 4, 6, 8) in equal stages over the first 100 optimizer
steps; from step 100 on it is ``batch_size``. The schedule is counted in **optimizer steps**: with
gradient accumulation every micro-batch of one step has the same size, so the step's gradient is an
average over equal parts. Sizes are per process (each data-parallel replica draws the same size).

While the ramp lasts, an epoch (a fixed number of blocks) holds more, smaller batches; its length in
batches is computed for the ramp position at its start, and the blocks left over at its end that do
not fill a batch are dropped, as ``drop_last`` does for the constant batch.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from llm_modules.data.sampling import ResumableSampler
from llm_modules.registry import ConfigError

FIELD = "data.batch_ramp"
KEYS = ("start", "steps", "increment")


@dataclass(frozen=True)
class BatchRamp:
    """The schedule: ``size_at(step)`` blocks per process per micro-batch at optimizer step ``step``."""

    start: int
    steps: int
    increment: int
    full: int

    @classmethod
    def parse(cls, value: dict[str, Any] | None, full: int) -> BatchRamp | None:
        """Validate the plain-data setting (None: no ramp) against ``data.batch_size`` = ``full``."""
        if value is None:
            return None
        if not isinstance(value, dict):
            raise ConfigError(f"{FIELD}={value!r} must be a mapping like {{start: 2, steps: 100, increment: 1}}")
        for key in value:
            if key not in KEYS:
                close = difflib.get_close_matches(str(key), KEYS, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ConfigError(f"{FIELD}.{key}: unknown key{hint}; keys: {', '.join(KEYS)}")
        for key in ("start", "steps"):
            if key not in value:
                raise ConfigError(f"{FIELD}.{key} is missing; give e.g. {{start: 2, steps: 100}}")
        start, steps, increment = (value.get(k, 1) for k in KEYS)
        for key, number in zip(KEYS, (start, steps, increment)):
            if isinstance(number, bool) or not isinstance(number, int) or number < 1:
                raise ConfigError(f"{FIELD}.{key}={number!r} must be a positive integer")
        if start > full:
            raise ConfigError(f"{FIELD}.start={start} is larger than data.batch_size={full}, the size it ramps "
                              "up to; lower start or raise batch_size")
        if (full - start) % increment:
            raise ConfigError(f"{FIELD}.increment={increment} does not divide data.batch_size - start "
                              f"({full} - {start} = {full - start}); pick an increment that does, so the ramp "
                              "ends at batch_size")
        return cls(start, steps, increment, full)

    def size_at(self, step: int) -> int:
        """Blocks per process per micro-batch at optimizer step ``step`` (0-based)."""
        if step >= self.steps:
            return self.full
        grown = (self.full - self.start) * step // self.steps
        return self.start + grown // self.increment * self.increment

    def samples_in_steps(self, steps: int) -> int:
        """Blocks per process (per micro-batch slot) over the first ``steps`` optimizer steps."""
        ramp = min(steps, self.steps)
        return sum(self.size_at(s) for s in range(ramp)) + max(0, steps - self.steps) * self.full


class Rows:
    """A map-style dataset indexed by a *list* of indices (one batch): what a DataLoader with
    ``batch_size=None`` hands its collate function when the sampler yields whole batches."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, indices: list[int]) -> list:
        return [self.dataset[i] for i in indices]


class RampBatchSampler(ResumableSampler):
    """A :class:`ResumableSampler` that yields whole batches whose sizes follow a :class:`BatchRamp`.

    It stays a DistributedSampler (and is the loader's ``sampler``, with ``batch_size=None``) so that
    Lightning does not replace it under DDP; a custom ``batch_sampler`` would be re-instantiated by
    Lightning around a sampler of its own, losing the order and the resume position.

    ``batches_consumed`` counts the batches (micro-batches) that reached the model since training
    began, over all epochs: the ramp position; batch ``b`` belongs to optimizer step
    ``b // accumulate``. ``epoch_start_batch`` is its value when the current epoch began, so that
    ``len()`` (batches in the current epoch) is right after a resume too.
    """

    def __init__(self, order_fn: Callable[[int], np.ndarray], num_samples: int, ramp: BatchRamp,
                 accumulate: int = 1, num_replicas: int = 1, rank: int = 0):
        super().__init__(order_fn, num_samples, num_replicas=num_replicas, rank=rank)
        self.ramp, self.accumulate = ramp, max(1, int(accumulate))
        self.batches_consumed = 0
        self.epoch_start_batch = 0

    def size_at(self, batch: int) -> int:
        """Per-process size of batch number ``batch`` (counted from the start of training)."""
        return self.ramp.size_at(batch // self.accumulate)

    def __iter__(self) -> Iterator[list[int]]:
        mine = list(super().__iter__())  # this epoch's (remaining) blocks of this process
        if self.samples_consumed == 0:
            self.epoch_start_batch = self.batches_consumed
        batches, pos = [], 0
        for size in self._sizes(len(mine), self.batches_consumed):
            batches.append(mine[pos:pos + size])
            pos += size
        return iter(batches)

    def __len__(self) -> int:
        """Batches of the current epoch, from its first (even when resumed in its middle)."""
        return self.batches_in(self.total // self.num_replicas, self.epoch_start_batch)

    def batches_in(self, samples: int, first_batch: int) -> int:
        """How many batches ``samples`` blocks of one process make, starting at batch ``first_batch``."""
        count = 0
        for size in self._sizes(samples, first_batch, stop_at_steady=True):
            samples, count = samples - size, count + 1
        if self._steady(first_batch + count):  # the rest is whole steps of full batches: count, don't walk
            count += samples // (self.ramp.full * self.accumulate) * self.accumulate
        return count

    def _steady(self, batch: int) -> bool:
        """Whether the ramp is over and ``batch`` begins an optimizer step."""
        return batch >= self.ramp.steps * self.accumulate and batch % self.accumulate == 0

    def _sizes(self, samples: int, first_batch: int, stop_at_steady: bool = False):
        """Sizes of the batches that ``samples`` blocks make from batch ``first_batch`` on, in whole
        optimizer steps: Lightning closes an accumulation window at an epoch's end, so an epoch holds
        whole steps only (blocks that cannot fill the next step's micro-batches are dropped), which
        keeps batch ``b`` in step ``b // accumulate`` across epochs."""
        batch = first_batch
        while not (stop_at_steady and self._steady(batch)):
            step, into = divmod(batch, self.accumulate)
            size, left = self.ramp.size_at(step), self.accumulate - into  # the rest of this step
            if size * left > samples:
                return
            yield from [size] * left
            samples, batch = samples - size * left, batch + left

    def consume_batch(self) -> int:
        """Account for one batch reaching the model; returns its per-process size."""
        size = self.size_at(self.batches_consumed)
        self.samples_consumed += size * self.num_replicas
        self.batches_consumed += 1
        return size

    def resume_ramp(self, batches_consumed: int, epoch_start_batch: int) -> None:
        self.batches_consumed, self.epoch_start_batch = batches_consumed, epoch_start_batch

    def position(self) -> tuple[int, int]:
        """(epoch, samples consumed); an epoch whose rest cannot fill the next step counts as finished."""
        left = self.total // self.num_replicas - self.samples_consumed // self.num_replicas
        if next(self._sizes(left, self.batches_consumed), None) is None:
            return self.active_epoch + 1, 0
        return self.active_epoch, self.samples_consumed
