"""Batch-size ramp-up: the schedule, what a fit actually trains on, resume mid-ramp, DDP split, errors."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from llm_modules.cli import main
from llm_modules.data.batch_ramp import BatchRamp, RampBatchSampler
from llm_modules.data.datamodule import TextDataModule
from llm_modules.registry import ConfigError

from _fit_helpers import CONFIGS, metric_rows, tiny

RAMP = {"start": 2, "steps": 6, "increment": 2}  # with batch_size 8: 2, 2, 4, 4, 6, 6, then 8


def make_dm(corpus, cache, **kw) -> TextDataModule:
    kw.setdefault("batch_ramp", RAMP)
    return TextDataModule(paths=[str(corpus)], cache_dir=str(cache), vocab_size=320, num_sentinels=8, seq_len=32,
                          batch_size=8, val_fraction=0.2, samples_per_epoch=40, **kw)


class Recorder(L.LightningModule):
    """Records each training batch (its epoch and its rows' first tokens); learns nothing."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.batches: list[tuple[int, list]] = []

    def training_step(self, batch, batch_idx):
        self.batches.append((self.current_epoch, batch["input_ids"][:, :4].tolist()))
        return (self.w * batch["input_ids"].float().mean()).sum()

    def validation_step(self, batch, batch_idx):
        pass

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def fit(dm, ckpt_path=None, callbacks=(), **kw) -> list[tuple[int, list]]:
    kw.setdefault("max_steps", 12)
    kw.setdefault("limit_val_batches", 0)
    model = Recorder()
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=bool(callbacks),
                        callbacks=list(callbacks), enable_progress_bar=False, enable_model_summary=False, **kw)
    trainer.fit(model, dm, ckpt_path=ckpt_path)
    return model.batches


def test_the_schedule_grows_linearly_in_increments_and_holds_at_batch_size():
    ramp = BatchRamp.parse({"start": 2, "steps": 12, "increment": 2}, full=8)
    assert [ramp.size_at(s) for s in range(14)] == [2] * 4 + [4] * 4 + [6] * 4 + [8, 8]
    assert BatchRamp.parse({"start": 1, "steps": 3}, full=4).increment == 1
    assert [BatchRamp.parse({"start": 1, "steps": 3}, full=4).size_at(s) for s in range(4)] == [1, 2, 3, 4]
    assert ramp.samples_in_steps(14) == 4 * (2 + 4 + 6) + 2 * 8
    assert BatchRamp.parse(None, full=8) is None


def test_a_fit_trains_on_batches_of_the_scheduled_sizes_across_epochs_with_accumulation(corpus, cache):
    """Per optimizer step: with accumulate 2 both micro-batches of a step share a size, also across
    epoch ends (an epoch's rest that cannot fill a whole step is dropped)."""
    dm = make_dm(corpus, cache)
    batches = fit(dm, max_steps=12, accumulate_grad_batches=2)
    sizes = [len(rows) for _, rows in batches]
    assert sizes == [dm.ramp.size_at(i // 2) for i in range(24)]
    # An epoch (40 blocks) holds whole optimizer steps: 2+2, 2+2, 4+4, 4+4, 6+6 (36; a step of 6+6
    # does not fit), then 6+6, 8+8 (28; 8+8 does not fit), then 8+8, 8+8 (32) in each later epoch.
    assert [epoch for epoch, _ in batches] == [0] * 10 + [1] * 4 + [2] * 4 + [3] * 4 + [4] * 2
    assert dm.state_dict()["batch_ramp"] == {"batches_consumed": 24, "epoch_start_batch": 22}
    assert dm.state_dict()["samples_consumed"] == 2 * 8
    # the planned tokens (and so the reported epochs) count the ramp's smaller batches
    planned_blocks = dm.ramp.samples_in_steps(12) * 2
    assert dm.effective_epochs()[dm.source_names[0]] == pytest.approx(planned_blocks / len(dm._sources[0].train))


def test_epoch_length_follows_the_ramp_position(corpus, cache):
    dm = make_dm(corpus, cache)
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert len(loader) == 8
    first = [len(b["input_ids"]) for b in loader]
    assert first == [2, 2, 4, 4, 6, 6, 8, 8]  # 40 blocks exactly
    dm._sampler.resume_ramp(len(first), len(first))  # as if the model had consumed them
    assert len(loader) == 5
    assert [len(b["input_ids"]) for b in loader] == [8] * 5


@pytest.mark.filterwarnings("ignore:Be aware that when using `ckpt_path`")
def test_resume_mid_ramp_continues_exactly(corpus, cache, tmp_path):
    """A checkpoint at step 3 (mid-ramp, mid-epoch): the resumed run trains on exactly the batches,
    in the same sizes, that the uninterrupted run trained on after step 3."""
    saver = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="{step}", every_n_train_steps=3, save_top_k=-1)
    full = fit(make_dm(corpus, cache), callbacks=[saver], max_steps=12)
    state = torch.load(tmp_path / "ckpt" / "step=3.ckpt", weights_only=True)["TextDataModule"]
    assert state["batch_ramp"] == {"batches_consumed": 3, "epoch_start_batch": 0}
    assert (state["epoch"], state["samples_consumed"]) == (0, 2 + 2 + 4)
    rest = fit(make_dm(corpus, cache), ckpt_path=str(tmp_path / "ckpt" / "step=3.ckpt"), max_steps=12)
    assert [len(rows) for _, rows in rest] == [len(rows) for _, rows in full[3:]] == [4, 6, 6, 8, 8] + [8] * 4
    assert rest == full[3:]
    # and from the next epoch's checkpoint (step 9: the ramp is over, epoch 1 has begun)
    state = torch.load(tmp_path / "ckpt" / "step=9.ckpt", weights_only=True)["TextDataModule"]
    assert state["batch_ramp"] == {"batches_consumed": 9, "epoch_start_batch": 8}
    rest = fit(make_dm(corpus, cache), ckpt_path=str(tmp_path / "ckpt" / "step=9.ckpt"), max_steps=12)
    assert rest == full[9:]


def test_two_processes_draw_disjoint_batches_of_the_same_size():
    order = lambda epoch: np.random.default_rng([3, epoch]).permutation(60)
    ramp = BatchRamp.parse({"start": 1, "steps": 4, "increment": 1}, full=4)  # 1, 1, 2, 3, then 4
    ranks = [RampBatchSampler(order, 60, ramp, num_replicas=2, rank=r) for r in (0, 1)]
    parts = [list(s) for s in ranks]
    assert [len(b) for b in parts[0]] == [len(b) for b in parts[1]] == [1, 1, 2, 3, 4, 4, 4, 4, 4]
    assert len(ranks[0]) == 9  # 27 of each rank's 30 blocks; 3 dropped
    flat = [i for p in parts for b in p for i in b]
    assert len(flat) == len(set(flat)) == 2 * 27
    # each batch consumes size * 2 global samples; resumed on both ranks, both continue where they were
    for s in ranks:
        for _ in range(3):
            s.consume_batch()
    assert ranks[0].samples_consumed == 2 * (1 + 1 + 2) and ranks[0].position() == (0, 8)
    resumed = [RampBatchSampler(order, 60, ramp, num_replicas=2, rank=r) for r in (0, 1)]
    for s in resumed:
        s.resume(0, 8)
        s.resume_ramp(3, 0)
    assert [list(s) for s in resumed] == [p[3:] for p in parts]


def test_with_accumulation_an_epoch_ends_when_its_rest_cannot_fill_a_whole_step():
    sampler = RampBatchSampler(lambda epoch: np.arange(42), 42, BatchRamp.parse(RAMP, full=8), accumulate=2)
    sizes = [len(b) for b in sampler]
    assert sizes == [2] * 4 + [4] * 4 + [6] * 2 and len(sampler) == 10  # 36 of 42: one 6 would fit, not two
    for _ in sizes:
        sampler.consume_batch()
    assert sampler.position() == (1, 0)
    assert [len(b) for b in sampler] == [6, 6, 8, 8]  # the next epoch goes on with step 5 (28 of 42)


def test_the_logged_batch_size_follows_the_ramp_from_the_cli(corpus, cache, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = tiny(CONFIGS / "quickstart.yaml", corpus, cache, "--data.init_args.batch_ramp", str(RAMP),
                "--trainer.log_every_n_steps", "1", steps=8)
    assert main(["fit", *args]) == 0
    logged = metric_rows(tmp_path / "runs" / "llm" / "version_0", "train/batch_size")
    ramp = BatchRamp.parse(RAMP, full=8)
    assert [(step, size) for step, size in logged] == [(s, float(ramp.size_at(s))) for s in range(8)]


@pytest.mark.parametrize(("setting", "field"), [
    ({"start": 2, "stpes": 10}, "data.batch_ramp.stpes"),
    ({"start": 2}, "data.batch_ramp.steps"),
    ({"start": 0, "steps": 10}, "data.batch_ramp.start"),
    ({"start": 9, "steps": 10}, "data.batch_ramp.start"),
    ({"start": 2, "steps": 10, "increment": 4}, "data.batch_ramp.increment"),
    ({"start": 2, "steps": 2.5}, "data.batch_ramp.steps"),
    ({"start": True, "steps": 3}, "data.batch_ramp.start"),
    ([2, 10], "data.batch_ramp"),
])
def test_bad_settings_are_refused_naming_the_field(corpus, cache, setting, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        make_dm(corpus, cache, batch_ramp=setting)


def test_plans_that_lightning_would_count_wrong_are_refused(corpus, cache):
    with pytest.raises(ConfigError, match=r"data\.batch_ramp.*trainer\.max_steps"):
        fit(make_dm(corpus, cache), max_steps=-1, max_epochs=2)
    with pytest.raises(ConfigError, match=r"data\.batch_ramp.*trainer\.check_val_every_n_epoch: null"):
        fit(make_dm(corpus, cache), limit_val_batches=2)  # validation at each epoch's end, by fraction
    batches = fit(make_dm(corpus, cache), limit_val_batches=2, check_val_every_n_epoch=None, val_check_interval=4)
    assert len(batches) == 12
