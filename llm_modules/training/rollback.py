"""Rolling back to the newest checkpoint written before a loss spike, as PaLM and OPT did by hand.

The checkpoints are ModelCheckpoint's: those it tracks (the CLI keeps ``last.ckpt``, the best by
validation loss, and with ``--checkpoint.every_n_train_steps`` one every N steps) and any other in its
folder (``save_top_k: -1`` keeps them all but tracks only the newest). A checkpoint qualifies when it
belongs to this run (its guard state's ``run_id``, kept across resumes), its step is not after the
first refused batch of the streak, and it was not written during a streak (``in_streak``): the
weights the spike grew from are exactly what a rollback must leave behind. (Refused batches change nothing, so a checkpoint written mid-streak holds those very
weights, and ``last.ckpt`` is overwritten at every save: more frequent saves leave more to choose.)

Restored: weights, optimizer state, LR schedulers and the spike statistics, through the strategy's
own loaders, so sharded (FSDP, ModelParallel) checkpoints load as on resume. Not restored: the data
position (it moves on, skipping the batches between the checkpoint and the spike), ``global_step``
(it counts batches drawn; the schedule, restored, follows the updates), the counters (cumulative),
tokens seen and the RNG state.

Nothing is unpickled: candidates are read with ``weights_only=True``, and one whose tensor data does
not match its integrity record (``llm_modules.integrity``) is passed over for the next older
one, with a warning.
"""

from __future__ import annotations

import logging
from pathlib import Path

import llm_modules.integrity as integrity
from llm_modules.registry import ConfigError
from llm_modules.training.stability import STATE_KEY, StabilityGuard, TrainingUnstable

log = logging.getLogger(__name__)


def roll_back(guard: StabilityGuard, lm) -> None:
    """Restore the newest qualifying checkpoint, or, with none, warn and let the guard go on skipping
    spikes (``max_consecutive_skips`` ends a run that does not come back)."""
    trainer, config = lm.trainer, guard.config
    path = _newest_good_checkpoint(trainer, guard) if trainer.is_global_zero else None
    path = trainer.strategy.broadcast(path)  # every rank loads the same one
    if path is None:
        if trainer.is_global_zero:
            log.warning(
                "step %d: %d spikes in a row but no checkpoint written before them to roll back to; skipping "
                "spikes until the loss comes back (at most model.stability.max_consecutive_skips=%d in a row). "
                "Save more often (--checkpoint.every_n_train_steps) to allow rollbacks",
                lm.global_step, guard.streak, config.max_consecutive_skips,
            )
        return
    if guard.rollbacks >= config.max_rollbacks:
        raise TrainingUnstable(
            f"step {lm.global_step}: the loss spiked again after {guard.rollbacks} rollbacks "
            f"(model.stability.max_rollbacks={config.max_rollbacks}); the run is not recovering. Lower optim.lr, "
            "check the data, or raise model.stability.skip_batches / max_rollbacks"
        )
    checkpoint = trainer.strategy.load_checkpoint(path)
    trainer.strategy.load_model_state_dict(checkpoint, strict=lm.strict_loading)
    trainer.strategy.load_optimizer_state_dict(checkpoint)
    for scheduler_config, state in zip(trainer.lr_scheduler_configs, checkpoint.get("lr_schedulers", [])):
        scheduler_config.scheduler.load_state_dict(state)
    guard.rolled_back(checkpoint.get(STATE_KEY))
    if trainer.is_global_zero:
        log.warning("step %d: rolled back to %s (step %s); the data moves on, %d more batches skipped",
                    lm.global_step, path, checkpoint.get("global_step"), config.skip_batches)


def _newest_good_checkpoint(trainer, guard: StabilityGuard) -> str | None:
    """The qualifying checkpoint with the highest step whose data verifies, or None."""
    qualifying: list[tuple[int, str]] = []
    for path in sorted(_candidates(trainer)):
        meta = _metadata(path)
        state = (meta or {}).get(STATE_KEY) or {}
        step = meta.get("global_step") if meta else None
        if step is None or step > guard.streak_start or state.get("in_streak") or state.get("run_id") != guard.run_id:
            continue
        qualifying.append((step, path))
    for step, path in sorted(qualifying, key=lambda item: -item[0]):
        if Path(path).is_dir() or _intact(path):
            return path
    return None


def _intact(path: str) -> bool:
    try:
        integrity.load_verified(path, mmap=True)
    except ConfigError as err:
        log.warning("%s; not a rollback candidate", err)
        return False
    return True


def _candidates(trainer) -> set[str]:
    """Checkpoints that ModelCheckpoint tracks, and the others in its folder (files, or sharded
    checkpoint folders with a ``meta.pt``)."""
    paths = set()
    for callback in trainer.checkpoint_callbacks:
        paths.update(str(p) for p in (callback.last_model_path, callback.best_model_path, *callback.best_k_models) if p)
        folder = Path(callback.dirpath) if callback.dirpath else None
        if folder is not None and folder.is_dir():
            paths.update(str(p) for p in folder.iterdir()
                         if p.suffix == callback.FILE_EXTENSION or (p / "meta.pt").is_file())
    return paths


def _metadata(path: str) -> dict | None:
    """A checkpoint's top-level entries without reading its tensors (memory-mapped; for a sharded
    checkpoint folder, its ``meta.pt``). None when it is gone or unreadable."""
    folder = Path(path)
    target = folder / "meta.pt" if folder.is_dir() else folder
    if not target.is_file():
        return None
    try:  # weights_only=True; the data is verified only for the chosen one (_intact)
        return integrity.load_verified(target, mmap=not folder.is_dir(), check=False)
    except ConfigError as err:  # half-written, foreign, holding code
        log.warning("%s; not a rollback candidate", err)
        return None
