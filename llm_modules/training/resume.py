"""Exact resume: the random state a checkpoint needs besides weights, optimizer, schedule and data.

Lightning restores the model, optimizer, scheduler and loops; the data module restores its position
and its collator's stream. What is left is the global random state that dropout (and anything else
calling ``torch.rand``, ``numpy.random`` or ``random``) draws from. :class:`ExactResume` stores it in
every checkpoint (``checkpoint["rng_states"]``) and puts it back **at the first training batch of the
resumed run**, after everything that draws during start-up (model construction under
``seed_everything``, sanity validation, data-loader iterators), so the resumed run trains on the
same random numbers as the run that wrote the checkpoint. It also gives each validation pass the
random state back afterwards, so how often (or whether) validation runs never shifts training's
stream; a resumed run that validates at other moments than the original still matches it.

Why a callback and not LightningModule hooks: it works for any module (a user's, a PEFT wrapper), its
timing hooks (first training batch, validation start/end) are callback hooks anyway, and the LM base
stays about modelling.

Under DDP every process is seeded alike (``seed_everything``) but need not stay alike (rank-dependent
draws, uneven work), so each process's state is gathered and stored: ``{"world_size": W, "ranks":
[state of rank 0, ...]}``; rank r resumes from entry r. Resuming on another number of processes
cannot be exact (the data split changes too): it warns and uses entry ``r % W``.

States are plain tensors, ints, floats and strings, so checkpoints still load with
``weights_only=True``.
"""

from __future__ import annotations

import logging
import random
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn

log = logging.getLogger(__name__)

KEY = "rng_states"


def collect_rng_state() -> dict[str, Any]:
    """torch (CPU, and this process's CUDA device once CUDA is in use), numpy and Python ``random``."""
    version, internal, gauss_next = random.getstate()
    numpy_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "bit_generator": numpy_state["bit_generator"],
            "key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
            "pos": int(numpy_state["state"]["pos"]),
            "has_gauss": int(numpy_state["has_gauss"]),
            "gauss": float(numpy_state["gauss"]),
        },
        "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64), "gauss_next": gauss_next},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()  # the current device: one per process in Lightning
    return state


def apply_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state({
        "bit_generator": n["bit_generator"],
        "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]},
        "has_gauss": n["has_gauss"],
        "gauss": n["gauss"],
    })
    p = state["python"]
    random.setstate((p["version"], tuple(int(x) for x in p["internal"].tolist()), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


class ExactResume(Callback):
    """Store the global random state in every checkpoint and restore it at the first resumed batch.

    Also flushes the loggers whenever a checkpoint is written, so the metrics a resumed run continues
    from are on disk whenever the checkpoint is (CSV rows otherwise wait for the next flush, up to
    ``flush_logs_every_n_steps`` steps, and a kill loses them).
    """

    def __init__(self):
        self._pending: dict[str, Any] | None = None
        self._held: dict[str, Any] | None = None

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        mine = collect_rng_state()
        world = trainer.world_size
        if world > 1 and dist.is_available() and dist.is_initialized():
            states: list[Any] = [None] * world
            dist.all_gather_object(states, mine)  # every process saves (Trainer.save_checkpoint runs on all)
        else:
            states, world = [mine], 1
        checkpoint[KEY] = {"world_size": world, "ranks": states}
        for logger in trainer.loggers:
            logger.save()

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        if trainer.state.fn != TrainerFn.FITTING:  # validate/test/predict from a checkpoint: nothing resumes
            return
        saved = checkpoint.get(KEY)
        if not saved:
            log.warning("resume: the checkpoint holds no random state (written without ExactResume); training "
                        "continues from this run's seed, not from where the checkpoint's run stood")
            return
        rank, world = trainer.global_rank, trainer.world_size
        if saved["world_size"] != world:
            log.warning("resume: the checkpoint was written by %d processes and this run has %d; random streams "
                        "(and the data split) differ from an uninterrupted run", saved["world_size"], world)
        self._pending = saved["ranks"][rank % len(saved["ranks"])]

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._pending is not None:
            apply_rng_state(self._pending)
            self._pending = None

    def on_validation_start(self, trainer, pl_module) -> None:
        self._held = collect_rng_state()

    def on_validation_end(self, trainer, pl_module) -> None:
        if self._held is not None:
            apply_rng_state(self._held)
            self._held = None
