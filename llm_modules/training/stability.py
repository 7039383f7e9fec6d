"""Loss-spike and non-finite guards, and gradient-norm logging.

Two things go wrong in long runs. A batch (or an overflow) yields a NaN/inf loss or gradient, and
one optimizer step with it poisons the weights and the Adam moments for good. Or the loss spikes:
PaLM and OPT saw the loss jump far above its trend, sometimes recovering, sometimes diverging; both
restarted from a checkpoint from before the spike and skipped the data window around it (PaLM: ~100
steps back, 200-500 batches skipped). The guard here does both, inside the Lightning step:

- ``training_step`` computes the loss, averages it over the processes (one all-reduce of two
  scalars, which also gives the logged ``train/loss``) and asks the guard about it. A refused batch
  gets no backward and no optimizer step, so it leaves no trace in the weights or the optimizer.
- ``optimizer_step`` runs Lightning's closure (training_step, zero_grad, backward) itself, then
  steps only if the window contributed gradients and they are finite (see
  :meth:`StabilityGuard.optimizer_step` for the closure and precision-plugin details).
- Repeated spikes roll back to the newest checkpoint written before them (``rollback.py``).

Counting (the why): a refused batch is still *drawn*: Lightning's ``global_step`` (and with it
``max_steps``, checkpoint step numbers, the data position) advances, so the data moves forward and a
resumed run knows where it is. The learning-rate schedule instead follows the *updates applied*: it
does not step for a refused step (``LanguageModel.lr_scheduler_step``) and a rollback restores it
with the weights, as a restart from a checkpoint would. A run with skips therefore ends at
``max_steps`` batches with fewer updates, its schedule short of its end by that many steps.

Costs and limits: judging the loss reads one scalar on the host per step (a device sync, as the
progress bar's loss already is); the gradient norm is one more pass over the gradients (plus one
collective per device mesh when they are sharded). With several processes a refused batch still
runs forward and backward, its loss times zero (Lightning refuses None there, DDP needs every rank
in the backward). DeepSpeed owns its optimizer step: the spike guard is refused there, a non-finite
loss stops the run unless in fp16 (whose loss scaler skips the step itself), and the logged norm is
the engine's. The closure runs once, before ``step``, so closure-re-evaluating optimizers (LBFGS)
are not supported; ``optim`` offers AdamW and Adafactor.
"""

from __future__ import annotations

import logging
import math
import uuid
import warnings
from dataclasses import dataclass
from typing import Any

import torch

from llm_modules.checkpoint_contents import STABILITY_KEY
from llm_modules.registry import ConfigError
from llm_modules.training.grad_norm import grad_norm

log = logging.getLogger(__name__)

#: where the guard's state lives in a checkpoint
STATE_KEY = STABILITY_KEY


class TrainingUnstable(RuntimeError):
    """The guards refused too much: the run is not recovering, so it stops rather than spin."""


@dataclass
class StabilityConfig:
    """Plain data: when a training batch is skipped, and when training rolls back.

    ``skip_nonfinite`` (on): a NaN/inf loss skips the batch, NaN/inf gradients skip the optimizer
    step. It never fires on a healthy run and one such step ruins the weights, so it is on.

    ``spike_guard`` (off): a loss above both ``mean + spike_zscore * std`` and ``spike_ratio * mean``
    of the running statistics skips the batch. The statistics are exponential moving averages with
    an effective window of ``spike_window`` batches, fed only with batches that were trained on, and
    judge nothing until ``spike_warmup`` batches fed them. Off by default: a short or small-batch run
    (the quickstart) has a noisy, heavy-tailed per-batch loss, and a legitimately hard batch must not
    silently vanish from it; spikes are a large-run problem, and the user who meets one turns it on.
    Both thresholds must be crossed: the z-score alone fires on tiny bumps once the loss is flat
    (std near 0), the ratio alone ignores how noisy the loss is. A falling loss is never a spike.

    ``rollback_after``: that many refused batches in a row (spikes or non-finite losses) roll the
    model, optimizer and LR schedule back to the newest checkpoint written before the first of them
    (0: never; spikes are only skipped). The data keeps moving forward, so the batches between that
    checkpoint and the spike are skipped, and ``skip_batches`` more after the rollback.
    ``max_rollbacks``: one more rollback than this stops the run (TrainingUnstable).
    ``max_consecutive_skips``: this many refused batches in a row stop the run, whatever the reason
    (no checkpoint to roll back to, NaN every step): a run that cannot recover should end, not spin.

    ``log_grad_norm``: log ``train/grad_norm``, the total 2-norm of the gradients before clipping.
    """

    skip_nonfinite: bool = True
    spike_guard: bool = False
    spike_zscore: float = 6.0
    spike_ratio: float = 1.2
    spike_window: int = 100
    spike_warmup: int = 100
    rollback_after: int = 3
    skip_batches: int = 0
    max_rollbacks: int = 5
    max_consecutive_skips: int = 100
    log_grad_norm: bool = True

    def __post_init__(self) -> None:
        for name in ("skip_nonfinite", "spike_guard", "log_grad_norm"):
            if not isinstance(getattr(self, name), bool):
                _refuse(name, getattr(self, name), "must be true or false", f"set model.stability.{name}: true")
        for name, low in (("spike_window", 1), ("spike_warmup", 1), ("rollback_after", 0), ("skip_batches", 0),
                          ("max_rollbacks", 0), ("max_consecutive_skips", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                _refuse(name, value, f"must be a whole number >= {low}", f"set model.stability.{name}: {low} or more")
        if not _is_number(self.spike_zscore) or self.spike_zscore < 0:
            _refuse("spike_zscore", self.spike_zscore, "must be >= 0 (standard deviations above the running mean)",
                    "set e.g. model.stability.spike_zscore: 6")
        if not _is_number(self.spike_ratio) or self.spike_ratio < 1:
            _refuse("spike_ratio", self.spike_ratio, "must be >= 1 (a spike lies above the running mean)",
                    "set e.g. model.stability.spike_ratio: 1.2 (1 leaves the z-score alone)")
        if self.spike_guard and self.rollback_after and self.max_consecutive_skips <= self.rollback_after:
            _refuse("max_consecutive_skips", self.max_consecutive_skips,
                    f"must exceed model.stability.rollback_after={self.rollback_after}, or the run stops before "
                    "it can roll back", "raise it, or set model.stability.rollback_after: 0 (no rollbacks)")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _refuse(name: str, value, rule: str, fix: str):
    raise ConfigError(f"model.stability.{name}={value!r} {rule}; {fix}")


class StabilityGuard:
    """The guard's running state (plain numbers, saved in checkpoints) and its decisions.

    One per LanguageModel, made in its ``__init__`` from ``model.stability`` and held as
    ``lm.stability_guard``; only its own methods change its state. Every process holds the same state: it only ever sees the
    globally averaged loss and globally reduced gradient norms, so all ranks refuse the same batches
    and step together (a rank that stepped alone would deadlock DDP or desynchronise the replicas).
    """

    def __init__(self, config: StabilityConfig):
        self.config = config
        # running statistics of the kept losses (exponentially weighted mean and variance)
        self.mean, self.var, self.seen = 0.0, 0.0, 0
        self.streak = 0            # refused batches in a row while the spike guard is on
        self.streak_start = -1     # global_step of the first of them
        self.consecutive = 0       # refused batches since the last applied step, any reason
        self.skip_left = 0         # batches still to skip after a rollback
        self.rollback_due = False  # a streak reached rollback_after; the rollback waits for the window's end
        self.skipped = 0           # cumulative: batches whose gradient was never applied
        self.rollbacks = 0         # cumulative
        # names this run's lineage in its checkpoints (kept on resume), so a rollback never picks up a
        # checkpoint that another run left in the same folder
        self.run_id = uuid.uuid4().hex
        self.rollback_armed = False  # the window is closed: the next batch rolls back
        # within one optimizer step (not saved: a checkpoint is written between steps)
        self.kept_in_window = 0
        self.step_skipped = False
        self.norm: torch.Tensor | None = None
        self._checked = False

    # ---- checkpoints ----------------------------------------------------------------------------------------

    _SAVED = ("mean", "var", "seen", "streak", "streak_start", "consecutive", "skip_left", "rollback_due",
              "rollback_armed", "skipped", "rollbacks", "run_id")

    def state_dict(self) -> dict[str, Any]:
        """Plain data. ``in_streak`` marks a checkpoint written during a run of refused batches: its
        weights are those the spike grew from, so a rollback never returns to it."""
        state = {name: getattr(self, name) for name in self._SAVED}
        state["in_streak"] = self.streak > 0 or self.rollback_due
        return state

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        for name in self._SAVED:
            if state and name in state:
                setattr(self, name, type(getattr(self, name))(state[name]))

    def rolled_back(self, saved: dict[str, Any] | None) -> None:
        """The model went back to a checkpoint (``rollback.roll_back``): take that checkpoint's loss
        statistics, count the rollback, start a new streak and skip ``skip_batches`` batches. The
        cumulative counters and the run id stay this run's."""
        saved = saved or {}
        self.mean = float(saved.get("mean", self.mean))
        self.var = float(saved.get("var", self.var))
        self.seen = int(saved.get("seen", self.seen))
        self.rollbacks += 1
        self.streak = self.consecutive = 0
        self.skip_left = self.config.skip_batches

    # ---- the loss -------------------------------------------------------------------------------------------

    def before_batch(self, lm) -> bool:
        """Run an armed rollback; False when this batch is skipped unseen: the rest of a window that
        is discarded for a rollback, or one of the ``skip_batches`` after one."""
        if not self._checked:
            self._checked = True
            _refuse_spike_guard_under_deepspeed(lm, self.config)
        if self.rollback_armed:
            self.rollback_armed = self.rollback_due = False
            from llm_modules.training.rollback import roll_back

            roll_back(self, lm)
        if self.rollback_due:
            self.skipped += 1
            return False
        if self.skip_left > 0:
            self.skip_left -= 1
            self.skipped += 1
            return False
        return True

    def admit(self, lm, loss: torch.Tensor) -> bool:
        """Judge a batch by its globally averaged total loss; True to train on it."""
        config = self.config
        if not (config.skip_nonfinite or config.spike_guard):
            self.kept_in_window += 1
            return True
        value = float(loss)  # one host sync per step: the decision to skip is taken on the host
        if not math.isfinite(value):
            if not config.skip_nonfinite or _deepspeed_lets_through(lm, f"a non-finite loss ({value})"):
                self.kept_in_window += 1  # trained on, but kept out of the statistics
                return True
            self._refuse(lm, 1, f"non-finite loss ({value})")
            return False
        if config.spike_guard and self.seen >= config.spike_warmup and self._is_spike(value):
            self._refuse(lm, 1, f"loss spike ({value:.4g} against a running mean {self.mean:.4g}, "
                                f"std {math.sqrt(self.var):.3g})")
            return False
        self._update(value)
        self.streak = 0
        self.kept_in_window += 1
        return True

    def _is_spike(self, value: float) -> bool:
        config = self.config
        return value > self.mean + config.spike_zscore * math.sqrt(self.var) and value > config.spike_ratio * self.mean

    def _update(self, value: float) -> None:
        """Exponentially weighted mean and variance (West 1979 / Finch 2009), alpha = 2 / (window + 1)."""
        if self.seen == 0:
            self.mean, self.var = value, 0.0
        else:
            alpha = 2.0 / (self.config.spike_window + 1)
            delta = value - self.mean
            self.mean += alpha * delta
            self.var = (1 - alpha) * (self.var + alpha * delta * delta)
        self.seen += 1

    def _refuse(self, lm, batches: int, why: str, streak: bool = True, loud: bool = True) -> None:
        """Count ``batches`` refused for ``why``; with ``streak``, start or extend a spike streak (a
        bad loss; non-finite gradients with a fine loss are not a spike); stop a run that spins."""
        config = self.config
        self.skipped += batches
        self.consecutive += batches
        if streak and config.spike_guard and config.rollback_after:
            if self.streak == 0:
                self.streak_start = lm.global_step
            self.streak += batches
            # one attempt per streak: when no checkpoint qualifies, none will appear during the streak
            if self.streak >= config.rollback_after > self.streak - batches:
                self.rollback_due = True
        if lm.trainer.is_global_zero:
            log.log(logging.WARNING if loud else logging.DEBUG, "step %d: %s; skipped (%d batches in a row)",
                    lm.global_step, why, self.consecutive)
        if self.consecutive >= config.max_consecutive_skips:
            raise TrainingUnstable(
                f"step {lm.global_step}: {self.consecutive} batches in a row refused (the last: {why}); the run is "
                "not recovering. Check the data at this position and the learning rate (optim.lr), or raise "
                "model.stability.max_consecutive_skips"
            )

    def refused(self, lm, batch, loss: torch.Tensor | None = None):
        """What ``training_step`` returns for a refused batch.

        One process: None, which makes Lightning skip backward (the step itself is skipped in
        ``optimizer_step``). Several: Lightning refuses None there, and DDP/FSDP need every rank
        to run the same forward and backward, so the loss times zero: zero gradients for a spike,
        NaN ones for a NaN loss, and either way ``optimizer_step`` does not step this window.
        """
        if lm.trainer.world_size == 1:
            warnings.filterwarnings("ignore", message="`training_step` returned `None`")
            return None
        if loss is None:
            loss = lm.compute_loss(batch)["loss"]
        return loss * 0.0

    # ---- the optimizer step ---------------------------------------------------------------------------------

    def optimizer_step(self, lm, optimizer, closure) -> None:
        """Run the closure here, then step only when the window's gradients may be applied.

        Lightning's closure runs training_step, zero_grad and backward; the optimizer normally calls
        it inside ``step()``, and once inside there is no way back. Running it first lets the guard
        decide: no step when every batch of the window was refused or a rollback is due, nor (without
        a loss scaler) when the gradients are not finite. Otherwise ``optimizer.step`` gets a closure
        that returns the result already computed, so the precision plugin still runs
        ``on_before_optimizer_step``, unscaling and clipping in their usual order.

        fp16 (a GradScaler): the scaler skips non-finite steps itself and must see them to lower its
        scale, so the guard lets it step and reads the skip from the scale going down. (Skipping
        before it would never lower the scale: every later step would overflow too.) A closure result
        of None means "no backward" to the plugins, so a window with a refused last batch but earlier
        kept ones passes a stand-in loss instead.
        """
        config = self.config
        trainer = lm.trainer
        if _deepspeed(trainer) is not None:
            self._deepspeed_step(lm, optimizer, closure)
            return
        result = closure()
        kept, self.kept_in_window = self.kept_in_window, 0
        self.norm = None
        skip = kept == 0
        if self.rollback_due:
            self.rollback_armed, skip = True, True
            self.skipped += kept
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        if not skip and scaler is None and (config.skip_nonfinite or config.log_grad_norm):
            self.norm = grad_norm(lm)
            if config.skip_nonfinite and self.norm is not None and not bool(torch.isfinite(self.norm)):
                skip = True
                self._refuse(lm, kept, f"non-finite gradients (norm {float(self.norm)})", streak=False)
        self.step_skipped = skip
        if not skip:
            scale = scaler.get_scale() if scaler is not None else None
            stand_in = result if result is not None else torch.zeros((), device=lm.device)
            optimizer.step(closure=lambda: stand_in)
            if scaler is not None and scaler.get_scale() < scale:
                self.step_skipped = True
                self._refuse(lm, kept, "fp16 gradients overflowed (the GradScaler lowered its scale)",
                             streak=False, loud=False)
            else:
                self.consecutive = 0
        # Free the window's gradients now: Lightning's own zero_grad comes only after the next
        # forward, so they would sit beside that forward's activations at its peak (4 bytes per
        # fp32 parameter). The next window's first backward makes them anew.
        optimizer.zero_grad(set_to_none=True)
        self._log_counters(lm)

    def on_before_optimizer_step(self, lm) -> None:
        """Log the gradient norm: after fp16 unscaling, before clipping (the plugin's order)."""
        if not self.config.log_grad_norm:
            return
        norm = self.norm if self.norm is not None else grad_norm(lm)
        self.norm = None
        if norm is not None:
            lm.log("train/grad_norm", norm.detach().float())

    def _log_counters(self, lm) -> None:
        lm.log("train/skipped_batches", float(self.skipped))
        lm.log("train/rollbacks", float(self.rollbacks))

    def _deepspeed_step(self, lm, optimizer, closure) -> None:
        """DeepSpeed's engine owns the gradients and the step (and counts micro-steps in it), so the
        guard cannot skip one there: it steps as usual and logs the engine's own pre-clip norm."""
        self.kept_in_window = 0
        self.step_skipped = False
        optimizer.step(closure=closure)
        norm = _deepspeed(lm.trainer).get_global_grad_norm()
        if self.config.log_grad_norm and norm is not None:
            lm.log("train/grad_norm", float(norm))
        self._log_counters(lm)


def global_losses(lm, out: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(lm_loss, total loss) averaged over the processes in one all-reduce: the logged curve is the
    global batch's, and every rank judges the same number."""
    losses = torch.stack([out["lm_loss"].detach().float(), out["loss"].detach().float()])
    if lm.trainer.world_size > 1:
        losses = lm.trainer.strategy.reduce(losses, reduce_op="mean")
    return losses[0], losses[1]


def _deepspeed(trainer):
    """The DeepSpeed engine when the strategy is DeepSpeed, else None."""
    from lightning.pytorch.strategies import DeepSpeedStrategy

    return trainer.strategy.model if isinstance(trainer.strategy, DeepSpeedStrategy) else None


def _refuse_spike_guard_under_deepspeed(lm, config: StabilityConfig) -> None:
    if config.spike_guard and _deepspeed(lm.trainer) is not None:
        raise ConfigError(
            "model.stability.spike_guard=True cannot skip batches under DeepSpeed (its engine owns the optimizer "
            "step); set model.stability.spike_guard: false, or train with the ddp/fsdp strategies"
        )


def _deepspeed_lets_through(lm, what: str) -> bool:
    """Under DeepSpeed a batch cannot be skipped (see ``_deepspeed_step``). In fp16 its loss scaler
    skips an overflowing step itself, so the batch goes through (True); otherwise stopping beats
    training on, as the update would be NaN. False when the strategy is not DeepSpeed."""
    if _deepspeed(lm.trainer) is None:
        return False
    if str(lm.trainer.precision).startswith("16"):
        return True
    raise TrainingUnstable(
        f"step {lm.global_step}: {what} under DeepSpeed, whose engine owns the optimizer step, so the batch "
        "cannot be skipped; lower optim.lr or check the data, or train with the ddp/fsdp strategies"
    )
