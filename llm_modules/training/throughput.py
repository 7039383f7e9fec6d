"""Throughput: tokens/s, model FLOPs per token (PaLM's formula), achieved TFLOP/s and MFU.

MFU (model FLOPs utilization, PaLM appendix B) is the FLOPs the *model* needs per second at the
observed token rate, divided by the hardware's peak. It counts the training math once: activation
checkpointing's recomputation is not in it (that would be hardware FLOPs utilization), and frozen
parameters still count as trained (6 FLOPs per parameter per token), so runs with different memory
savers compare on the same scale.

The per-token count and the peaks live in ``training.model_flops`` (no Lightning there). A CPU is often shared, so one measurement taken while other work ran would understate the peak
(and overstate MFU) for the whole run: the monitor re-measures briefly once per window, outside
the timed intervals, and keeps the best rate seen.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback

from llm_modules.nn.lm import EncoderDecoderLM

from llm_modules.training.model_flops import (  # noqa: F401  (re-exported: the monitor's figures)
    PEAKS, Peak, compute_dtype, flops_per_token, gpu_peak_flops, lookup_gpu, math_mode, matmul_parameters,
    measure_matmul_flops, peak_flops,
)
from llm_modules.data.replicas import data_parallel_split

log = logging.getLogger("llm_modules.throughput")


# ---- the callback -----------------------------------------------------------------------------------------


class ThroughputMonitor(Callback):
    """Logs ``perf/tokens_per_s`` (all processes), ``perf/flops_per_token``, ``perf/tflops_per_s``
    (achieved, per device) and ``perf/mfu`` at every optimizer step, so the trainer's logging
    cadence (``log_every_n_steps``) writes them in the same metrics.csv rows as ``train/loss``.

    Each figure is an average over the last ``window`` optimizer steps (default: the trainer's
    ``log_every_n_steps``), so a logged row describes the interval since the previous row. On CPU
    the peak is re-measured (about 0.05 s, untimed) whenever a window completes. A step
    spans all its accumulated micro-batches. The first ``warmup_steps`` optimizer steps of a run
    (default 1: compilation, allocator and kernel warm-up) are never counted, nor is time spent in
    validation and checkpointing. ``peak_tflops`` overrides the per-device peak (e.g. for a GPU
    missing from the table).
    """

    def __init__(self, peak_tflops: float | None = None, window: int | None = None, warmup_steps: int = 1):
        super().__init__()
        self.peak_tflops = peak_tflops
        self.window = window
        self.warmup_steps = max(1, warmup_steps)  # the first step's interval has no start to time from
        self.peak: float | None = None
        #: the figures logged last (over the window ending at the latest optimizer step)
        self.last: dict[str, float] = {}
        self._flops_cache: dict[tuple[int, int | None], float] = {}
        self._clock: float | None = None
        self._pause_start: float | None = None

    # ---- set-up -------------------------------------------------------------------------------------------

    def on_train_start(self, trainer, pl_module) -> None:
        self._remeasure: torch.dtype | None = None
        if self.peak_tflops is not None:
            self.peak, source = self.peak_tflops * 1e12, "given peak_tflops"
        else:
            self.peak, source = peak_flops(pl_module.device, trainer.precision)
            if pl_module.device.type == "cpu":
                self._remeasure = compute_dtype(trainer.precision)
        if trainer.is_global_zero:
            if self.peak is None:
                log.info(f"throughput: {source}; perf/mfu is not logged "
                         "(give the peak with ThroughputMonitor(peak_tflops=...))")
            else:
                log.info(f"throughput: MFU against {self.peak / 1e12:.3g} TFLOP/s per device ({source})")
        self._encoder_decoder = isinstance(getattr(pl_module, "model", None), EncoderDecoderLM)
        self._steps: deque = deque(maxlen=max(1, self.window or trainer.log_every_n_steps or 1))
        self._last_step = trainer.global_step
        self._boundaries = 0
        self._clock: float | None = None
        self._paused = 0.0
        self._pause_start: float | None = None
        self._tokens = 0
        self._flops = 0.0

    # ---- counting -----------------------------------------------------------------------------------------

    def batch_work(self, config, batch: dict[str, Any], ids: torch.Tensor | None = None) -> tuple[int, float]:
        """(tokens, model FLOPs) of one micro-batch on this process; ``ids``: the rows the model
        reads when they are not ``batch["input_ids"]`` (``LanguageModel.batch_rows``)."""
        ids = batch["input_ids"] if ids is None else ids
        rows, length = ids.shape
        decoder_len = None
        if self._encoder_decoder:
            target = batch.get("decoder_input_ids", batch.get("labels"))
            decoder_len = int(target.shape[1])
        key = (int(length), decoder_len)
        if key not in self._flops_cache:
            self._flops_cache[key] = flops_per_token(config, *key)
        tokens = rows * (length + (decoder_len or 0))
        return tokens, tokens * self._flops_cache[key]

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._pause_start is not None:  # validation (and its checkpoint) ran since the last batch
            self._paused += time.perf_counter() - self._pause_start
            self._pause_start = None

    def on_validation_start(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking and self._clock is not None:
            self._pause_start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        rows = pl_module.batch_rows(batch) if hasattr(pl_module, "batch_rows") else None
        tokens, flops = self.batch_work(pl_module.config, batch, rows)
        self._tokens += tokens
        self._flops += flops
        if trainer.global_step == self._last_step:
            return  # still accumulating gradients: the optimizer step has not happened yet
        self._last_step = trainer.global_step
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        now = time.perf_counter()
        self._boundaries += 1
        if self._boundaries > self.warmup_steps:
            elapsed = max(now - self._clock - self._paused, 1e-9)
            self._steps.append((self._tokens, self._flops, elapsed))
        self._paused, self._tokens, self._flops = 0.0, 0, 0.0
        if self._remeasure is not None and self._boundaries % self._steps.maxlen == 0:
            # Before logging, so the row just written uses the best rate seen so far.
            self.peak = max(self.peak or 0.0, measure_matmul_flops(self._remeasure, budget_s=0.05))
        self._clock = time.perf_counter()  # after any measurement: that is not training time
        if self._steps:
            self.log_window(trainer, pl_module)

    def log_window(self, trainer, pl_module) -> None:
        tokens = sum(s[0] for s in self._steps)
        flops = sum(s[1] for s in self._steps)
        seconds = sum(s[2] for s in self._steps)
        # Data-parallel replicas see different batches; tensor-parallel ranks share one.
        dp, world = data_parallel_split(trainer)[0], max(1, trainer.world_size)
        per_device = flops * dp / world / seconds  # all processes' model FLOPs, shared by every device
        metrics = {
            "perf/tokens_per_s": tokens * dp / seconds,
            "perf/flops_per_token": flops / max(tokens, 1),
            "perf/tflops_per_s": per_device / 1e12,
        }
        if self.peak:
            metrics["perf/mfu"] = per_device / self.peak
        self.last = metrics
        for key, value in metrics.items():
            pl_module.log(key, float(value), prog_bar=key == "perf/tokens_per_s", on_step=True, on_epoch=False)
