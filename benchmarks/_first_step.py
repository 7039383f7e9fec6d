"""A callback for ``benchmarks/startup.py``: writes the wall clock when the first training step ends, then
stops the run (``--trainer.callbacks+=_first_step.FirstStepTimer``, with this folder on PYTHONPATH)."""

from __future__ import annotations

import os
import time

from lightning.pytorch.callbacks import Callback


class FirstStepTimer(Callback):
    """Writes ``time.time()`` at the start and at the end of the first training batch into the file named
    by ``LLM_MODULES_FIRST_STEP_FILE`` (one line each), then asks the trainer to stop."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._stamp()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._stamp()
        trainer.should_stop = True

    @staticmethod
    def _stamp() -> None:
        path = os.environ.get("LLM_MODULES_FIRST_STEP_FILE")
        if path:
            with open(path, "a") as f:
                f.write(f"{time.time()!r}\n")
