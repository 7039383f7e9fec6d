"""A callback for ``benchmarks/startup.py``: writes the wall clock when the first training step ends, then
stops the run (``--trainer.callbacks+=_first_step.FirstStepTimer``, with this folder on PYTHONPATH)."""

from __future__ import annotations

import os
import time

from lightning.pytorch.callbacks import Callback


class FirstStepTimer(Callback):
    """Stamps ``time.time()`` into the file named by ``LLM_MODULES_FIRST_STEP_FILE`` at the end of the
    first training batch and asks the trainer to stop."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        path = os.environ.get("LLM_MODULES_FIRST_STEP_FILE")
        if path and not os.path.exists(path):
            with open(path, "w") as f:
                f.write(repr(time.time()))
        trainer.should_stop = True
