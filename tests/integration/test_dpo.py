"""DPO: raises the chosen-minus-rejected margin on held-out pairs, uses the base with LoRA switched off
as its reference (no copy), precomputes reference log-probs equal to on-the-fly ones, and
saves a policy that loads as a plain CausalLM."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from _finetune_helpers import base  # noqa: F401  (the fixture)
from lightning.pytorch.callbacks import Callback
from test_reward_model import PREFERENCES as PREFERENCES_FILE
from test_reward_model import data, standalone_data, trainer, validate

from llm_modules import CausalLM
from llm_modules.alignment import DPO
from llm_modules.alignment.losses import sequence_logprobs
from llm_modules.alignment.preference import joined
from llm_modules.checkpoint import load_checkpoint, save_checkpoint
from llm_modules.registry import ConfigError

LORA = {"name": "lora", "r": 4, "targets": ["*.q", "*.v"]}


def test_dpo_raises_the_margin_and_the_implicit_reward_accuracy(base):
    """At step 0 the policy is its reference: every implicit reward is 0 (accuracy 0). After 20 steps
    the held-out chosen responses gain log-probability over the rejected ones."""
    torch.manual_seed(0)
    model = DPO(init_from=str(base.checkpoint), beta=0.1, optim={"lr": 1e-3, "warmup_steps": 0})
    before = validate(model)
    trainer(20).fit(model, datamodule=data())
    after = validate(model)
    margin = {name: m["val/logps/chosen"] - m["val/logps/rejected"] for name, m in (("before", before), ("after", after))}
    print(f"dpo: logp(chosen) - logp(rejected) {margin['before']:.2f} -> {margin['after']:.2f} nats; "
          f"val/rewards/accuracy {before['val/rewards/accuracy']:.3f} -> {after['val/rewards/accuracy']:.3f}")
    assert before["val/rewards/margin"] == 0.0 and before["val/rewards/accuracy"] == 0.0
    assert before["val/loss"] == pytest.approx(0.6931, abs=1e-4)  # log 2
    assert margin["after"] > margin["before"] + 5.0
    assert after["val/rewards/accuracy"] > 0.8 and after["val/rewards/margin"] > 0.5
    assert after["val/loss"] < before["val/loss"]


def test_lora_reference_is_the_base_with_adapters_switched_off(base):
    """No copy of the weights, and after training the reference log-probs are exactly the base model's."""
    torch.manual_seed(0)
    model = DPO(init_from=str(base.checkpoint), peft=LORA, optim={"lr": 1e-2, "warmup_steps": 0})
    plain = CausalLM(init_from=str(base.checkpoint)).eval()
    assert model.reference_model is None
    assert sum(p.numel() for p in model.parameters() if not p.requires_grad) == plain.num_parameters()
    trainer(3).fit(model, datamodule=data())
    both = joined(next(iter(standalone_data(base).val_dataloader())))
    with torch.no_grad():
        expected = sequence_logprobs(plain(both["input_ids"], both["attention_mask"]), both["labels"])
        policy = sequence_logprobs(model.eval()(both["input_ids"], both["attention_mask"]), both["labels"])
        assert torch.equal(model.reference_logprobs(both), expected)
    assert not torch.allclose(policy, expected), "the policy trained away from its reference"


class CacheProbe(Callback):
    """The reference cache as training ends (it is dropped when fit ends)."""

    def on_train_end(self, trainer, pl_module) -> None:
        self.cache = dict(pl_module._reference_cache)


def test_precomputed_reference_equals_on_the_fly(base):
    torch.manual_seed(0)
    model = DPO(init_from=str(base.checkpoint), precompute_reference=True, optim={"lr": 1e-3, "warmup_steps": 0})
    probe = CacheProbe()
    run = L.Trainer(max_steps=2, limit_val_batches=0, logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", callbacks=[probe])
    run.fit(model, datamodule=data())
    assert len(probe.cache) == 300 and model._reference_cache is None
    checked = 0
    for batch in standalone_data(base).val_dataloader():
        chosen, rejected = model.reference_logprobs(joined(batch)).chunk(2)
        for key, c, r in zip(batch["keys"], chosen.tolist(), rejected.tolist()):
            assert probe.cache[key] == pytest.approx((c, r), abs=1e-4)
            checked += 1
    assert checked > 40


def test_checkpoint_holds_the_policy_only_and_loads_as_a_causal_lm(base, tmp_path):
    torch.manual_seed(0)
    model = DPO(init_from=str(base.checkpoint), optim={"lr": 1e-3, "warmup_steps": 0})
    trainer(2).fit(model, datamodule=data())
    path = save_checkpoint(model, tmp_path / "dpo.ckpt")
    saved = torch.load(path, map_location="cpu", weights_only=True)
    assert saved["model_kind"] == "CausalLM" and saved["hyper_parameters"]["_class_path"].endswith("dpo.DPO")
    assert set(saved["state_dict"]) == {f"model.{k}" for k in model.model.state_dict()}
    policy = load_checkpoint(path)
    ids = torch.randint(10, 300, (2, 9))
    assert type(policy) is CausalLM
    with torch.no_grad():
        assert torch.equal(policy(ids), model.eval()(ids))

    # Resuming from the full checkpoint (its hyper-parameters name no base) rebuilds the reference
    # from the base the checkpoint recorded, not from the weights it starts with.
    resumed = DPO(base.config)
    resumed.on_load_checkpoint(saved)
    start = CausalLM(init_from=str(base.checkpoint))
    assert all(torch.equal(a, b) for a, b in zip(resumed.reference_model.state_dict().values(),
                                                  start.model.state_dict().values()))


def test_bad_options_name_the_field(base):
    with pytest.raises(ConfigError, match="model.beta"):
        DPO("llama-tiny", beta=-1)
    with pytest.raises(ConfigError, match="model.loss_type"):
        DPO("llama-tiny", loss_type="hinge")
    with pytest.raises(ConfigError, match="holds a CausalLM.*model.init_args.backbone: CausalLM"):
        DPO(init_from=str(base.checkpoint), backbone="PrefixLM")


def test_prefix_lm_backbone_reads_the_prompt_as_its_prefix(base):
    """A PrefixLM policy (from scratch here): the batches carry prefix_lengths, the model reads them,
    and at the start the policy and its reference agree exactly."""
    from llm_modules.data import PreferenceDataModule

    torch.manual_seed(0)
    model = DPO(base.config, backbone="PrefixLM").eval()
    dm = PreferenceDataModule(paths=[str(PREFERENCES_FILE)], tokenizer=str(base.tokenizer), kind="PrefixLM",
                              max_len=128, batch_size=4, val_fraction=0.2)
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))
    both = joined(batch)
    assert both["prefix_lengths"] is not None and model.model.prefix
    with torch.no_grad():
        policy = sequence_logprobs(model(both["input_ids"], both["attention_mask"], both["prefix_lengths"]),
                                   both["labels"])
        causal = sequence_logprobs(model(both["input_ids"], both["attention_mask"]), both["labels"])
        assert torch.equal(model.reference_logprobs(both), policy)
        assert not torch.allclose(policy, causal), "the prefix is read bidirectionally"
        out = model.compute_loss(batch)
    assert out["loss"].item() == pytest.approx(0.6931, abs=1e-4)
