"""A random collator's stream in the checkpoint, so a resumed run draws the masks the original would.

The objectives' collators (masking, span corruption, random prefixes) draw from their own
``torch.Generator`` and expose ``state_dict``/``load_state_dict``. The data module stores that state
with its position and hands it back to the training collator before the first resumed batch is
collated (also when the collator is only built after the checkpoint is loaded).

The state saved is the generator as it stands when the checkpoint is written, which is the state
after the last batch the model trained on: with ``num_workers=0`` a batch is collated when the loop
asks for it, and Lightning does not fetch ahead from a loader that has a length (ours always do).
The SIGKILL test in tests/integration/test_resume.py fails if that ever stops holding.

With ``num_workers > 0`` each worker collates with a generator of its own (re-seeded from the worker
seed, see ``collators.Collator.generator``) that no checkpoint holds, so the masks after a resume
differ from the uninterrupted run's; resuming warns about it.

Validation draws apart from training (``validation_collate``): a copy of the collator that restarts
its draws for every batch from its seed and the batch's own tokens. A held-out batch is then masked
the same way on every validation pass, so ``val/loss`` moves only with the model, and identically
whatever ran before it: how many passes, a resume, the order, the worker or the rank.
"""

from __future__ import annotations

import copy
import logging
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)


def has_rng_state(collate: Any) -> bool:
    return callable(getattr(collate, "state_dict", None)) and callable(getattr(collate, "load_state_dict", None))


class CollatorRNG:
    """The training collator's random state: read for checkpoints, applied on resume."""

    def __init__(self):
        self._collate: Callable | None = None
        self._pending: dict | None = None

    def attach(self, collate: Callable) -> Callable:
        """Note the training loader's collate function (and give it a state loaded before it existed)."""
        if has_rng_state(collate):
            self._collate = collate
            if self._pending is not None:
                collate.load_state_dict(self._pending)
                self._pending = None
        return collate

    def state(self) -> dict | None:
        return self._collate.state_dict() if self._collate is not None else self._pending

    def load(self, state: dict | None, num_workers: int) -> None:
        if state is None:
            return
        if num_workers > 0:
            log.warning("data: resuming with num_workers=%d; the collator's random draws happen in the workers, "
                        "whose streams a checkpoint does not hold, so they differ from the interrupted run's "
                        "(num_workers: 0 resumes them exactly)", num_workers)
        if self._collate is not None:
            self._collate.load_state_dict(state)
        else:
            self._pending = state


def validation_collate(collate: Callable) -> Callable:
    """The collate function for held-out batches: a copy of ``collate`` (so validating never advances
    training's random stream) whose draws restart for every batch, keyed by the batch, where the
    collator can restart them (``restart_draws``); otherwise the plain copy."""
    own = copy.deepcopy(collate)
    return BatchKeyedDraws(own) if callable(getattr(own, "restart_draws", None)) else own


class BatchKeyedDraws:
    """Collates each batch with the collator's draws restarted from the batch's key (``batch_key``)."""

    def __init__(self, collate: Callable):
        self.collate = collate

    def __call__(self, examples: Any) -> Any:
        self.collate.restart_draws(batch_key(examples))
        return self.collate(examples)


def batch_key(examples: Any) -> int:
    """A 32-bit digest of a batch's contents (token tensors, arrays, lists, dicts, numbers, strings)."""
    digest = 0
    for part in _parts(examples):
        digest = zlib.crc32(part, digest)
    return digest


def _parts(value: Any):
    if isinstance(value, torch.Tensor):
        yield value.detach().cpu().contiguous().numpy().tobytes()
    elif isinstance(value, np.ndarray):
        yield np.ascontiguousarray(value).tobytes()
    elif isinstance(value, dict):
        for name in sorted(value, key=str):
            yield str(name).encode()
            yield from _parts(value[name])
    elif isinstance(value, (list, tuple)):
        yield b"["
        for item in value:
            yield from _parts(item)
        yield b"]"
    else:
        yield repr(value).encode()
