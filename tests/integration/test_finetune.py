"""Fine-tuning through the Trainer: init_from, every PEFT method, freezing, adapter-only checkpoints, merging.

Every method starts from the same small trained base (``_finetune_helpers.base``) and trains for a
CPU-sized number of steps on the tiny instruction set; the frozen base, evaluated on the same
validation records, is the figure each must beat. A probe records which parameters received
gradients at every optimizer step: exactly the method's, and the base's weights come out of
training bitwise as they went in.
"""

from __future__ import annotations

import os
import shutil

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger

from llm_modules import CausalLM, PrefixLM
from llm_modules.checkpoint import load_checkpoint, save_checkpoint
from llm_modules.data.instructions import InstructionDataModule
from llm_modules.registry import ConfigError
from llm_modules.models.finetuning import fold

from _finetune_helpers import INSTRUCTIONS, base, make_base  # noqa: F401  (base: the fixture)
from _fit_helpers import metric_rows

STEPS = 30
#: name -> (model.peft, model.memory, optim.lr); the freezing options ride along with two of them
METHODS = {
    "full": (None, {"freeze_layers": 1}, 1e-3),
    "lora": ({"name": "lora", "r": 4}, {}, 3e-3),
    "adapter": ({"name": "adapter", "bottleneck": 16}, {}, 3e-3),
    "prefix": ({"name": "prefix", "num_virtual_tokens": 8}, {}, 3e-3),
    "prompt": ({"name": "prompt", "num_virtual_tokens": 8, "init": "vocab"}, {"freeze_embeddings": True}, 3e-2),
    "ptuning": ({"name": "ptuning", "num_virtual_tokens": 8}, {}, 1e-2),
}


class GradProbe(Callback):
    """The names of the parameters that hold a gradient at each optimizer step."""

    def __init__(self):
        self.steps: list[set[str]] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.steps.append({n for n, p in pl_module.named_parameters() if p.grad is not None})


def data() -> InstructionDataModule:
    return InstructionDataModule(paths=[str(INSTRUCTIONS)], template="plain", batch_size=16, val_fraction=0.1)


def trainer(steps: int = STEPS, **options) -> L.Trainer:
    settings = dict(max_steps=steps, val_check_interval=steps, check_val_every_n_epoch=None, num_sanity_val_steps=0,
                    logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                    accelerator="cpu")
    return L.Trainer(**{**settings, **options})


def val_loss(lm, steps: int = STEPS) -> float:
    return trainer(steps).validate(lm, datamodule=data(), verbose=False)[0]["val/loss"]


@pytest.fixture(scope="module")
def frozen_loss(base):
    return val_loss(CausalLM(init_from=str(base.checkpoint)))


@pytest.fixture(scope="module")
def other_base(tmp_path_factory):
    """Another base of the same shape: other weights, another tokenizer."""
    return make_base(tmp_path_factory.mktemp("other-base"), steps=1, seed=1)


def base_weights(base) -> dict[str, torch.Tensor]:
    state = torch.load(base.checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    return {k: v for k, v in state.items() if k.startswith("model.")}


@pytest.mark.parametrize("method", METHODS)
def test_each_method_trains_only_its_parameters_and_beats_the_frozen_base(method, base, frozen_loss):
    peft, memory, lr = METHODS[method]
    lm = CausalLM(init_from=str(base.checkpoint), peft=peft, memory=memory,
                  optim={"lr": lr, "warmup_steps": 3, "weight_decay": 0.0})
    before = base_weights(base)
    probe = GradProbe()
    fit = trainer(callbacks=[probe])
    fit.fit(lm, datamodule=data())
    after = float(fit.callback_metrics["val/loss"])
    assert after < frozen_loss - 0.2, (method, frozen_loss, after)

    state = lm.state_dict()
    trainable = {n for n, p in lm.named_parameters() if p.requires_grad}
    assert len(probe.steps) == STEPS and all(step == trainable for step in probe.steps), method
    if peft is None:  # full fine-tuning with the first block frozen: everything else trains
        frozen = {k for k in before if k.startswith("model.stack.layers.0.")}
        assert frozen and trainable == {n for n, _ in lm.named_parameters()} - frozen
        assert all(torch.equal(state[k], before[k]) for k in frozen)
        assert not any(torch.equal(state[k], before[k]) for k in set(before) - frozen)
        return
    added = {f"model.{k}" for k in lm.peft_method.added_keys}
    assert trainable and trainable <= added, (trainable, added)
    assert set(before) == set(state) - added, "the method renamed or dropped base weights"
    assert all(torch.equal(state[k], before[k]) for k in before), f"{method} changed base weights"


def test_trainable_parameters_are_logged_at_the_start(base, tmp_path, caplog):
    lm = CausalLM(init_from=str(base.checkpoint), peft={"name": "lora", "r": 4})
    with caplog.at_level("INFO", logger="llm_modules.finetune"):
        trainer(2, logger=CSVLogger(tmp_path), limit_val_batches=0).fit(lm, datamodule=data())
    trainable, total = 2 * 2 * 4 * (128 + 128), sum(p.numel() for p in lm.parameters())  # layers x (q, v) x r x (in + out)
    assert f"peft lora: {trainable:,} of {total:,} parameters train ({100 * trainable / total:.2f}%)" in caplog.text
    run = tmp_path / "lightning_logs" / "version_0"
    assert metric_rows(run, "params/trainable") == [(0, trainable)]
    assert metric_rows(run, "params/trainable_share") == [(0, pytest.approx(trainable / total))]


def test_adapter_only_checkpoint_is_small_and_loads_back_onto_its_base(base, other_base, tmp_path):
    """A Lightning checkpoint of a LoRA run (r=2 on q and v) holds the LoRA tensors and their optimizer
    state; the same checkpoint with every tensor kept is the full one it is compared with."""
    lm = CausalLM(init_from=str(base.checkpoint), peft={"name": "lora", "r": 2}, optim={"lr": 3e-3, "warmup_steps": 1})
    fit = trainer(4, limit_val_batches=0)
    fit.fit(lm, datamodule=data())
    small, full = tmp_path / "adapter.ckpt", tmp_path / "full.ckpt"
    fit.save_checkpoint(small)
    lm.peft_checkpoint = "full"
    fit.save_checkpoint(full)
    lm.peft_checkpoint = "adapter"
    size, whole = os.path.getsize(small), os.path.getsize(full)
    assert size < 0.05 * whole, (size, whole)  # measured: 65 KB of 1.79 MB (3.6%)

    saved = torch.load(small, map_location="cpu", weights_only=True)
    assert set(saved["state_dict"]) == {f"model.{k}" for k in lm.peft_method.added_keys}
    assert saved["finetune"]["adapter_only"] and saved["finetune"]["init_from"] == str(base.checkpoint.resolve())
    assert len(saved["optimizer_states"][0]["state"]) == len(saved["state_dict"]), "optimizer state: LoRA only"

    ids = torch.randint(4, 384, (2, 12), generator=torch.Generator().manual_seed(0))
    expected = lm.eval()(ids)
    for path in (small, full):
        assert torch.equal(load_checkpoint(path)(ids), expected), path

    moved = tmp_path / "moved" / "base.ckpt"
    moved.parent.mkdir()
    shutil.copy(base.checkpoint, moved)
    assert torch.equal(load_checkpoint(small, init_from=moved)(ids), expected)
    with pytest.raises(ConfigError, match=r"its base, model.init_from='/nowhere/base.ckpt', does not exist here"):
        load_checkpoint(small, init_from="/nowhere/base.ckpt")
    with pytest.raises(ConfigError, match="trained on other base weights"):
        load_checkpoint(small, init_from=other_base.checkpoint)
    saved["state_dict"].pop(sorted(saved["state_dict"])[0])
    torch.save(saved, tmp_path / "truncated.ckpt")
    with pytest.raises(ConfigError, match=r"does not match the model with peft method 'lora' \(missing \['model.stack"):
        load_checkpoint(tmp_path / "truncated.ckpt")


def test_a_method_on_a_model_without_init_from_keeps_every_tensor(base, tmp_path):
    """No init_from: the base is this run's random initialization, which no file holds, so the
    checkpoint must keep it; loading gives back the same model."""
    lm = CausalLM(base.config, peft="adapter")
    saved = save_checkpoint(lm, tmp_path / "adapter-on-scratch.ckpt")
    header = torch.load(saved, map_location="cpu", weights_only=True)
    assert not header["finetune"]["adapter_only"] and set(header["state_dict"]) == set(lm.state_dict())
    ids = torch.randint(4, 384, (2, 12), generator=torch.Generator().manual_seed(0))
    assert torch.equal(load_checkpoint(saved).eval()(ids), lm.eval()(ids))


def test_merged_lora_gives_the_logits_of_the_unmerged_model(base):
    lm = CausalLM(init_from=str(base.checkpoint), peft={"name": "lora", "r": 4, "targets": ["*.q", "*.v", "*.ffn.*"]})
    with torch.no_grad():
        for name, p in lm.named_parameters():
            if "lora_b" in name:
                p.normal_(std=0.05)  # a trained-looking update: B starts at zero
    ids = torch.randint(4, 384, (2, 16), generator=torch.Generator().manual_seed(0))
    unmerged = lm.eval()(ids)
    merged = fold(lm)
    assert merged.peft_method is None and not any("lora" in k for k in merged.state_dict())
    torch.testing.assert_close(merged(ids), unmerged)  # fp32's default tolerances: merging rounds the weights
    assert (unmerged - CausalLM(init_from=str(base.checkpoint)).eval()(ids)).abs().max() > 1e-2  # LoRA did something


def test_a_full_fine_tune_checkpoint_loads_without_its_base_and_serves_as_init_from(base, tmp_path):
    copy = tmp_path / "base.ckpt"
    shutil.copy(base.checkpoint, copy)
    tuned = CausalLM(init_from=str(copy))
    saved = save_checkpoint(tuned, tmp_path / "tuned.ckpt")
    header = torch.load(saved, map_location="cpu", weights_only=True)
    assert header["hyper_parameters"]["init_from"] is None and not header["finetune"]["adapter_only"]
    copy.unlink()  # a self-contained checkpoint needs no base
    again = CausalLM(init_from=str(saved), peft="lora")
    assert again.tokenizer_bytes == tuned.tokenizer_bytes and again.config == tuned.config


def test_config_may_change_only_dropout_and_the_attention_backend(base):
    given = base.config.replace(dropout=0.1, attention="eager")
    lm = CausalLM(given, init_from=str(base.checkpoint))
    assert lm.config == given
    with pytest.raises(ConfigError) as err:
        CausalLM(base.config.replace(d_model=64, n_layers=3), init_from=str(base.checkpoint))
    message = str(err.value)
    assert "model.config does not match" in message and "d_model: 64 here, 128 there" in message
    assert "n_layers: 3 here, 2 there" in message and "leave model.config out" in message


def test_bad_init_from_and_peft_are_refused_naming_the_field(base, tmp_path):
    with pytest.raises(ConfigError, match=r"model.init_from: '/no/such.ckpt' does not exist"):
        CausalLM(init_from="/no/such.ckpt")
    with pytest.raises(ConfigError, match=r"holds a CausalLM, and the model is a PrefixLM; set model.class_path: "
                                          r"llm_modules.CausalLM"):
        PrefixLM(init_from=str(base.checkpoint))
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="model.init_from: checkpoint .* cannot be read"):
        CausalLM(init_from=str(junk))
    sharded = tmp_path / "sharded.ckpt"
    sharded.mkdir()
    (sharded / "meta.pt").write_bytes(b"")
    with pytest.raises(ConfigError, match="is a sharded checkpoint folder"):
        CausalLM(init_from=str(sharded))
    with pytest.raises(ConfigError, match="model.init_from: .*no config.json here"):
        CausalLM(init_from=str(tmp_path))
    lora = save_checkpoint(CausalLM(init_from=str(base.checkpoint), peft="lora"), tmp_path / "lora.ckpt")
    with pytest.raises(ConfigError, match=r"was fine-tuned with peft method 'lora'.*llm-modules export .* --merge"):
        CausalLM(init_from=str(lora))
    with pytest.raises(ConfigError, match=r"model.peft: unknown peft 'lorra' \(did you mean 'lora'\?\)"):
        CausalLM(init_from=str(base.checkpoint), peft="lorra")
    with pytest.raises(ConfigError, match="model.config: give the architecture .* or model.init_from"):
        CausalLM()
    with pytest.raises(ConfigError, match="model.peft_checkpoint must be one of adapter, full"):
        CausalLM(init_from=str(base.checkpoint), peft="lora", peft_checkpoint="lora")


def test_data_read_with_another_tokenizer_than_the_base_is_refused(base, other_base):
    lm = CausalLM(init_from=str(base.checkpoint), peft="lora")
    other = InstructionDataModule(paths=[str(INSTRUCTIONS)], tokenizer=str(other_base.tokenizer), template="plain")
    with pytest.raises(ConfigError, match=r"data.tokenizer: the data module's tokenizer is not the one model.init_from"):
        trainer(1).validate(lm, datamodule=other, verbose=False)
    own = InstructionDataModule(paths=[str(INSTRUCTIONS)], tokenizer=str(base.tokenizer), template="plain")
    trainer(1, limit_val_batches=1).validate(lm, datamodule=own, verbose=False)  # the same tokenizer, as a file


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is what a CPU-only machine sees")
def test_qlora_is_refused_on_a_cpu_with_the_way_out(base):
    with pytest.raises(ConfigError, match="model.peft: qlora needs a CUDA GPU"):
        CausalLM(init_from=str(base.checkpoint), peft="qlora")
