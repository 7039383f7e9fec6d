"""Checkpoint files that are either the old one or the complete new one, never half of each.

Lightning's ``TorchCheckpointIO`` saves through ``_atomic_save``: the checkpoint is serialized into
memory, written inside an fsspec transaction to a file from ``tempfile.mkstemp()`` (the system temp
folder) and moved over the target on commit. When the temp folder is on another filesystem than the
run (``/tmp`` as tmpfs, a network or scratch volume) that move is a copy *into the target path*, so a
kill during it truncates the previous checkpoint; nothing is fsynced, so a power loss can leave a
renamed but empty file; and the whole checkpoint sits in memory (and in ``/tmp``) once more.

:class:`AtomicCheckpointIO` writes through ``llm_modules.atomic_files.writing``, like every file this
library writes: straight to a temporary file next to the target (same folder, hence same
filesystem), fsynced, ``os.replace``-d over the target (atomic on POSIX and Windows), and the folder
fsynced so the rename itself survives a crash. The temporary name (``.last.ckpt.HOST-PID-RANDOM.tmp``)
starts with a dot and not with ``last``, so Lightning's search for ``last*.ckpt`` never mistakes a
leftover for a checkpoint; a save removes a killed save's leftovers, never the file another run is
writing at that moment. Remote paths (``s3://``...) keep Lightning's own saver.

Every checkpoint written here carries an integrity record (``llm_modules.integrity``), and
:class:`AtomicCheckpointIO` reads checkpoints with ``weights_only=True`` and verifies them, so
resume (``fit --ckpt_path``), ``validate/test/predict --ckpt_path`` and rollbacks refuse a damaged
or code-carrying file in one line.
"""

from __future__ import annotations

import os
from typing import Any

from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy

import llm_modules.integrity as integrity
from llm_modules.integrity import atomic_torch_save  # noqa: F401 (where the Trainer's saves were written from)


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local saves are atomic and durable (see the module docstring)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(
                "AtomicCheckpointIO.save_checkpoint does not take storage_options (as TorchCheckpointIO); "
                "give a custom CheckpointIO plugin to use them"
            )
        if "://" in str(path) and not str(path).startswith("file://"):
            super().save_checkpoint(checkpoint, path)  # object stores: fsspec's transaction is their atomicity
            return
        atomic_torch_save(checkpoint, str(path).removeprefix("file://"))

    def load_checkpoint(self, path, map_location: Any | None = None, weights_only: bool | None = None) -> dict[str, Any]:
        """Read with ``weights_only=True`` whatever the caller asks (nothing is ever unpickled) and
        verify the integrity record; a bad file is one ConfigError line naming it. Tensors come onto
        the CPU unless ``map_location`` says otherwise (where they are hashed; Lightning moves the
        states onto the model's device as it restores them)."""
        if "://" in str(path) and not str(path).startswith("file://"):
            return super().load_checkpoint(path, map_location=map_location, weights_only=True)
        local = str(path).removeprefix("file://")
        if os.path.isdir(local):  # a sharded checkpoint folder: its strategy's own reader
            return super().load_checkpoint(path, map_location=map_location, weights_only=True)
        return integrity.load_verified(local, map_location=map_location if map_location is not None else "cpu")


def use_atomic_checkpoints(trainer) -> bool:
    """Give ``trainer``'s strategy an :class:`AtomicCheckpointIO` where that changes nothing else.

    Only the strategies that save through the plain ``TorchCheckpointIO`` (one device, DDP in its
    forms) and only when no CheckpointIO was given by the user (``trainer.plugins``): FSDP, DeepSpeed,
    ModelParallel and XLA write their own (sharded) files their own way. Returns whether it was set.
    """
    strategy = trainer.strategy
    if type(strategy) not in (SingleDeviceStrategy, DDPStrategy) or strategy._checkpoint_io is not None:
        return False
    strategy.checkpoint_io = AtomicCheckpointIO()
    return True
