"""The stability guards in real Lightning runs of a tiny CausalLM on CPU.

Faults are injected per batch (``FaultyLM``): a loss times 1000 (a spike), a NaN loss, or an
infinite gradient behind a finite loss. The strongest check is used wherever the arithmetic allows
(all but the fp16 test): the weights after a
guarded run with faults equal, bit for bit, those of a run where the refused batches were never
there (deterministic CPU kernels, dropout 0), so nothing of a refused batch leaked into the weights,
the Adam moments or the learning-rate schedule.
"""

from __future__ import annotations

import copy
import json
import logging
import math
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.plugins import MixedPrecision
from torch.utils.data import DataLoader, Dataset

from llm_modules import CausalLM
from llm_modules.cli import main
from llm_modules.registry import ConfigError
from llm_modules.training.optim import OptimConfig
from llm_modules.training.stability import STATE_KEY, StabilityConfig, TrainingUnstable

from _core_helpers import tiny_config
from _fit_helpers import CONFIGS, metric_rows, tiny, write_corpus
from _fresh_process import in_a_fresh_interpreter

pytestmark = pytest.mark.filterwarnings("ignore:You defined a `validation_step` but have no `val_dataloader`")

GUARD = {"spike_guard": True, "spike_warmup": 3, "spike_window": 4}


class FaultyLM(CausalLM):
    """CausalLM whose batches carry faults: ``loss_scale`` multiplies the loss (1000: a spike, nan: a
    NaN loss), ``grad_scale`` the gradient flowing back from it (inf: non-finite gradients behind a
    finite loss)."""

    def compute_loss(self, batch):
        out = super().compute_loss(batch)
        loss = out["loss"] * batch["loss_scale"]
        if "grad_scale" in batch:
            scale = batch["grad_scale"]
            loss.register_hook(lambda grad: grad * scale)
        return {**out, "loss": loss}


def clean(seed: int, **fault) -> dict[str, torch.Tensor]:
    """A batch of the repeating token pattern, each row at a random phase."""
    g = torch.Generator().manual_seed(seed)
    phase = torch.randint(0, 6, (4, 1), generator=g)
    ids = (torch.arange(16) + phase) % 6 + 2
    return {"input_ids": ids, "loss_scale": torch.tensor(1.0), **{k: torch.tensor(v) for k, v in fault.items()}}


def poison(seed: int) -> dict[str, torch.Tensor]:
    return clean(seed, loss_scale=1000.0)


def make(**stability) -> FaultyLM:
    torch.manual_seed(0)
    return FaultyLM(tiny_config(), optim=OptimConfig(lr=3e-3, warmup_steps=2, max_steps=40),
                    stability=StabilityConfig(**stability))


def fit(lm, batches, *, callbacks=(), checkpointing=False, **trainer_kw) -> L.Trainer:
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_checkpointing=checkpointing,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        gradient_clip_val=trainer_kw.pop("gradient_clip_val", 1.0), callbacks=list(callbacks), **trainer_kw,
    )
    trainer.fit(lm, DataLoader(batches, batch_size=None))
    return trainer


def same_tensors(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def adam_steps(trainer) -> set[float]:
    return {float(state["step"]) for state in trainer.optimizers[0].state.values()}


def metric(trainer, name: str) -> float:
    return float(trainer.callback_metrics[name])


# ---- a poisoned batch is skipped ---------------------------------------------------------------------------


def test_a_poisoned_batch_is_skipped_as_if_it_were_never_there():
    batches = [clean(i) for i in range(10)]
    guarded, reference, unguarded = make(**GUARD), make(**GUARD), make()
    run = fit(guarded, batches[:6] + [poison(99)] + batches[6:])
    ref = fit(reference, batches)
    fit(unguarded, batches[:6] + [poison(99)] + batches[6:])

    assert same_tensors(guarded.state_dict(), reference.state_dict())
    assert not same_tensors(unguarded.state_dict(), reference.state_dict()), "the poison would have changed them"
    assert adam_steps(run) == adam_steps(ref) == {10.0}
    assert run.lr_scheduler_configs[0].scheduler.last_epoch == 10, "the schedule follows applied updates"
    assert run.global_step == 11, "the refused batch was drawn: global_step counts it"
    assert metric(run, "train/skipped_batches") == 1 and metric(run, "train/rollbacks") == 0
    assert metric(ref, "train/skipped_batches") == 0

    # the guard's state travels in checkpoints, so a resumed run continues the same statistics
    checkpoint: dict = {}
    guarded.on_save_checkpoint(checkpoint)
    resumed = make(**GUARD)
    resumed.on_load_checkpoint(checkpoint)
    state = resumed.stability_guard.state_dict()
    assert state == guarded.stability_guard.state_dict() and state["seen"] == 10 and state["skipped"] == 1


# ---- repeated spikes roll back -----------------------------------------------------------------------------


class Snapshot(Callback):
    """Model, optimizer and schedule state at the end of one batch."""

    def __init__(self, at: int):
        self.at, self.state = at, None

    def on_train_batch_end(self, trainer, lm, outputs, batch, batch_idx):
        if batch_idx == self.at:
            self.state = (copy.deepcopy(lm.state_dict()), copy.deepcopy(trainer.optimizers[0].state_dict()),
                          trainer.lr_scheduler_configs[0].scheduler.last_epoch)


def test_repeated_spikes_roll_back_to_the_last_checkpoint_before_them_and_the_data_moves_on(tmp_path):
    c = [clean(i) for i in range(14)]
    # checkpoints at steps 3, 6, 9 (the last written mid-streak, as is last.ckpt); spikes at batches 7-9;
    # the rollback runs at batch 10, which skip_batches=1 skips too; training goes on from batch 11
    batches = c[:7] + [poison(97), poison(98), poison(99)] + c[10:]
    saver = ModelCheckpoint(dirpath=tmp_path, filename="s{step}", auto_insert_metric_name=False,
                            every_n_train_steps=3, save_top_k=-1, save_last=True)
    snapshot = Snapshot(at=10)
    lm = make(**GUARD, rollback_after=3, skip_batches=1)
    run = fit(lm, batches, callbacks=[saver, snapshot], checkpointing=True)

    step6 = torch.load(tmp_path / "s6.ckpt", map_location="cpu", weights_only=False)
    step9 = torch.load(tmp_path / "s9.ckpt", map_location="cpu", weights_only=False)
    assert step9[STATE_KEY]["in_streak"] and not step6[STATE_KEY]["in_streak"]
    weights, optimizer, last_epoch = snapshot.state
    assert same_tensors(weights, step6["state_dict"]), "right after the rollback: the step-6 weights"
    saved_opt = step6["optimizer_states"][0]["state"]
    assert optimizer["state"].keys() == saved_opt.keys()
    assert all(same_tensors(optimizer["state"][k], saved_opt[k]) for k in saved_opt)
    assert last_epoch == step6["lr_schedulers"][0]["last_epoch"] == 6

    # batch 6 (after the checkpoint), the spikes and batch 10 are gone; batches 11-13 follow the checkpoint
    reference = make(**GUARD)
    ref = fit(reference, c[:6] + c[11:])
    assert same_tensors(lm.state_dict(), reference.state_dict())
    assert adam_steps(run) == adam_steps(ref) == {9.0}
    assert metric(run, "train/rollbacks") == 1
    assert metric(run, "train/skipped_batches") == 4  # three spikes and the skip_batches one
    assert run.global_step == 14


def test_without_a_checkpoint_to_roll_back_to_it_keeps_skipping_then_stops(caplog):
    batches = [clean(i) for i in range(5)] + [poison(90 + i) for i in range(6)]
    lm = make(**GUARD, rollback_after=2, max_consecutive_skips=4)
    with caplog.at_level(logging.WARNING, logger="llm_modules"), pytest.raises(TrainingUnstable) as err:
        fit(lm, batches)
    assert "max_consecutive_skips" in str(err.value) and "4 batches in a row" in str(err.value)
    assert any("no checkpoint written before them" in r.getMessage() for r in caplog.records)
    assert all(torch.isfinite(p).all() for p in lm.parameters())


def test_a_run_that_spikes_again_after_max_rollbacks_stops(tmp_path):
    c = [clean(i) for i in range(9)]
    batches = c[:5] + [poison(80), poison(81)] + c[5:7] + [poison(82), poison(83)] + c[7:]
    saver = ModelCheckpoint(dirpath=tmp_path, filename="s{step}", auto_insert_metric_name=False,
                            every_n_train_steps=2, save_top_k=-1)
    lm = make(**GUARD, rollback_after=2, max_rollbacks=1)
    with pytest.raises(TrainingUnstable, match=r"after 1 rollbacks \(model\.stability\.max_rollbacks=1\)"):
        fit(lm, batches, callbacks=[saver], checkpointing=True)
    assert lm.stability_guard.rollbacks == 1


# ---- non-finite losses and gradients -----------------------------------------------------------------------


def test_nan_losses_and_inf_gradients_are_skipped_without_touching_the_optimizer():
    c = [clean(i) for i in range(6)]
    faulty = c[:3] + [clean(50, loss_scale=math.nan), c[3], clean(51, grad_scale=math.inf)] + c[4:]
    lm, reference = make(), make()  # the defaults: the non-finite guard is on, the spike guard off
    run = fit(lm, faulty)
    ref = fit(reference, c)
    assert all(torch.isfinite(p).all() for p in lm.parameters())
    assert same_tensors(lm.state_dict(), reference.state_dict())
    assert adam_steps(run) == adam_steps(ref) == {6.0}
    assert run.lr_scheduler_configs[0].scheduler.last_epoch == 6
    assert metric(run, "train/skipped_batches") == 2

    control = make(skip_nonfinite=False)  # the fault is real: unguarded, it wrecks the weights
    fit(control, faulty)
    assert not all(torch.isfinite(p).all() for p in control.parameters())


def test_fp16_overflow_is_left_to_the_grad_scaler_and_counted():
    """Under a GradScaler the scaler must see the overflow (to lower its scale); the guard does not
    pre-empt it, but the step is counted as skipped and the schedule does not advance."""
    c = [clean(i) for i in range(5)]
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    lm = make()
    run = fit(lm, c[:2] + [clean(60, grad_scale=math.inf)] + c[2:],
              plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)])
    assert scaler.get_scale() == 512.0
    assert adam_steps(run) == {5.0} and run.lr_scheduler_configs[0].scheduler.last_epoch == 5
    assert metric(run, "train/skipped_batches") == 1
    assert all(torch.isfinite(p).all() for p in lm.parameters())


def test_an_accumulation_window_steps_with_its_kept_batches_and_not_at_all_without():
    """A refused micro-batch adds nothing (as a zero-loss one would); a window with none kept does not step."""
    c = [clean(i) for i in range(5)]
    nan, zero = clean(50, loss_scale=math.nan), clean(50, loss_scale=0.0)
    lm, reference = make(), make()
    run = fit(lm, c[:2] + [c[2], nan] + [nan, nan] + c[3:], accumulate_grad_batches=2)
    ref = fit(reference, c[:2] + [c[2], zero] + c[3:], accumulate_grad_batches=2)
    assert same_tensors(lm.state_dict(), reference.state_dict())
    assert adam_steps(run) == adam_steps(ref) == {3.0}
    assert run.lr_scheduler_configs[0].scheduler.last_epoch == 3
    assert metric(run, "train/skipped_batches") == 3


class PerRank(Dataset):
    """Step k's batch for this process: item k is a pair (rank 0's batch, rank 1's batch)."""

    def __init__(self, pairs):
        self.pairs = pairs

    def __len__(self):
        return len(self.pairs)

    def __getitem__(self, k):
        return self.pairs[k][torch.distributed.get_rank()]


class Report(Callback):
    """At the end of a DDP run each rank writes what it ended with, and whether the replicas agree
    (a rank that stepped alone would leave them different)."""

    def __init__(self, folder: Path):
        self.folder = folder

    def on_train_end(self, trainer, lm):
        flat = torch.cat([p.detach().flatten() for p in lm.parameters()])
        both = trainer.strategy.all_gather(flat)
        report = {"replicas_agree": bool(torch.equal(both[0], both[1])), "adam_steps": sorted(adam_steps(trainer)),
                  "global_step": trainer.global_step}
        (self.folder / f"rank{trainer.global_rank}.json").write_text(json.dumps(report))


def fit_ddp(lm, pairs, folder: Path, callbacks=(), checkpointing=False) -> tuple[L.Trainer, list[dict]]:
    """Two CPU processes, forked (no re-import, so seconds), each fed its own batches. Call it only in a
    fresh interpreter (``in_a_fresh_interpreter``): a worker that has imported pyarrow cannot fork safely."""
    folder.mkdir(parents=True, exist_ok=True)
    trainer = L.Trainer(
        accelerator="cpu", devices=2, strategy="ddp_fork", max_epochs=1, logger=False,
        enable_checkpointing=checkpointing, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, gradient_clip_val=1.0, use_distributed_sampler=False,
        callbacks=[*callbacks, Report(folder)],
    )
    trainer.fit(lm, DataLoader(PerRank(pairs), batch_size=None))
    return trainer, [json.loads((folder / f"rank{r}.json").read_text()) for r in (0, 1)]


def test_under_ddp_every_rank_refuses_what_one_rank_saw(tmp_path, request):
    """A spike, a NaN loss and an inf gradient, each on one rank only, are refused by both (the
    averaged loss, the all-reduced gradients); the weights equal a run without those steps."""
    if not in_a_fresh_interpreter(request):  # ddp_fork: forked from a process that has done nothing else
        return
    c = [(clean(2 * k), clean(2 * k + 1)) for k in range(6)]
    faulty = c[:3] + [(poison(99), clean(98)), (clean(97), clean(50, loss_scale=math.nan)),
                      (clean(53, grad_scale=math.inf), clean(52))] + c[3:]
    lm, reference = make(**GUARD), make(**GUARD)
    run, ranks = fit_ddp(lm, faulty, tmp_path / "run")
    _, ref_ranks = fit_ddp(reference, c, tmp_path / "ref")
    assert same_tensors(lm.state_dict(), reference.state_dict())
    assert ranks[0] == ranks[1] == {"replicas_agree": True, "adam_steps": [6.0], "global_step": 9}
    assert ref_ranks[0]["adam_steps"] == [6.0]
    assert metric(run, "train/skipped_batches") == 3


def test_under_ddp_a_spike_streak_on_one_rank_rolls_both_back(tmp_path, request):
    """The rollback under DDP: rank 0 picks the checkpoint and broadcasts it, both load it."""
    if not in_a_fresh_interpreter(request):  # ddp_fork: forked from a process that has done nothing else
        return
    c = [(clean(2 * k), clean(2 * k + 1)) for k in range(14)]
    faulty = c[:7] + [(clean(90 + k), poison(80 + k)) for k in range(3)] + c[10:]
    saver = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="s{step}", auto_insert_metric_name=False,
                            every_n_train_steps=3, save_top_k=-1, save_last=True)
    lm, reference = make(**GUARD, rollback_after=3, skip_batches=1), make(**GUARD)
    run, ranks = fit_ddp(lm, faulty, tmp_path / "run", callbacks=[saver], checkpointing=True)
    fit_ddp(reference, c[:6] + c[11:], tmp_path / "ref")
    assert same_tensors(lm.state_dict(), reference.state_dict())
    assert ranks[0] == ranks[1] == {"replicas_agree": True, "adam_steps": [9.0], "global_step": 14}
    assert metric(run, "train/rollbacks") == 1 and metric(run, "train/skipped_batches") == 4


# ---- gradient norm -----------------------------------------------------------------------------------------


def test_grad_norm_is_the_total_norm_before_clipping():
    lm = make()
    by_hand = copy.deepcopy(lm)
    batch = clean(0)
    run = fit(lm, [batch], gradient_clip_val=0.01)
    by_hand.compute_loss(batch)["loss"].backward()
    expected = torch.stack([p.grad.pow(2).sum() for p in by_hand.parameters()]).sum().sqrt()
    assert expected > 0.1, "far above the clip value, so a clipped norm could not pass"
    torch.testing.assert_close(run.callback_metrics["train/grad_norm"], expected)


# ---- settings ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("field, value", [
    ("spike_zscore", -1.0), ("spike_zscore", math.nan), ("spike_ratio", 0.5), ("spike_window", 0),
    ("spike_warmup", 0), ("rollback_after", -1), ("skip_batches", -2), ("max_rollbacks", -1),
    ("max_consecutive_skips", 0), ("skip_nonfinite", "yes"), ("spike_window", 2.5),
])
def test_bad_settings_are_refused_naming_the_field_and_the_fix(field, value):
    with pytest.raises(ConfigError) as err:
        StabilityConfig(**{field: value})
    assert f"model.stability.{field}=" in str(err.value) and ("set" in str(err.value) or "raise" in str(err.value))


def test_a_stop_limit_below_the_rollback_count_is_refused():
    with pytest.raises(ConfigError, match=r"model\.stability\.max_consecutive_skips=3 must exceed "
                                          r"model\.stability\.rollback_after=3"):
        CausalLM(tiny_config(), stability={"spike_guard": True, "max_consecutive_skips": 3})
    StabilityConfig(spike_guard=True, rollback_after=0, max_consecutive_skips=3)  # no rollbacks: fine


def test_cli_logs_the_guard_metrics_and_refuses_a_bad_setting(tmp_path, monkeypatch, capsys):
    """From the shipped quickstart YAML with the spike guard on (its thresholds at their defaults,
    a short warm-up): nothing legitimate is skipped, and the metrics reach metrics.csv."""
    monkeypatch.chdir(tmp_path)
    # the CLI gives the llm_modules logger a handler bound to this test's captured stderr; keep it here
    monkeypatch.setattr(logging.getLogger("llm_modules"), "handlers", [])
    corpus, cache = write_corpus(tmp_path / "corpus"), tmp_path / "cache"
    args = tiny(CONFIGS / "quickstart.yaml", corpus, cache, "--model.init_args.stability.spike_guard", "true",
                "--model.init_args.stability.spike_warmup", "5", steps=16)
    assert main(["fit", *args]) == 0
    run = tmp_path / "runs" / "llm" / "version_0"
    norms = metric_rows(run, "train/grad_norm")
    assert len(norms) >= 1 and all(v > 0 and math.isfinite(v) for _, v in norms)
    assert [v for _, v in metric_rows(run, "train/skipped_batches")][-1] == 0
    assert [v for _, v in metric_rows(run, "train/rollbacks")][-1] == 0
    capsys.readouterr()

    assert main(["fit", *args, "--model.init_args.stability.spike_ratio", "0.5"]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("llm-modules")]
    assert len(lines) == 1 and "model.stability.spike_ratio" in lines[0], lines
