"""Who owns what: fine-tuning and stability state in objects of their own, checkpoint facts stored
once (and old files with the second copy still read), one table of LM kinds."""

from __future__ import annotations

import pytest
import torch

import llm_modules.models as models
from llm_modules import kinds
from llm_modules.checkpoint import checkpoint_dict, load_checkpoint, save_checkpoint
from llm_modules.checkpoint_contents import model_config, model_kind
from llm_modules.estimate.params import KINDS as ESTIMATE_KINDS
from llm_modules.models.finetuning import FineTuning
from llm_modules.training.stability import StabilityGuard

from _core_helpers import tiny_config


def test_finetuning_and_stability_state_are_held_objects_that_only_they_change():
    lm = models.CausalLM(tiny_config(), stability={"spike_guard": True})
    assert isinstance(lm.finetuning, FineTuning) and isinstance(lm.stability_guard, StabilityGuard)
    assert lm.stability_guard.config is lm.stability and lm.stability_guard.config.spike_guard
    assert lm.peft_method is None and lm.init_from is None and lm.peft_checkpoint == "adapter"
    for name in ("peft_method", "init_from"):  # views of the FineTuning object: not written from outside
        with pytest.raises(AttributeError):
            setattr(lm, name, None)
    lm.peft_checkpoint = "full"  # a public option: checked, and kept by the object that uses it
    assert lm.finetuning.checkpoint_mode == "full"
    with pytest.raises(Exception, match="peft_checkpoint must be one of adapter, full"):
        lm.peft_checkpoint = "lora"
    # the guard's state goes into checkpoints and comes back through the guard itself
    lm.stability_guard.rolled_back({"mean": 2.5, "var": 0.25, "seen": 7})
    state = checkpoint_dict(lm)["stability_state"]
    assert (state["mean"], state["seen"], state["rollbacks"]) == (2.5, 7, 1)
    again = models.CausalLM(tiny_config())
    again.on_load_checkpoint({"stability_state": state})
    assert again.stability_guard.state_dict() == lm.stability_guard.state_dict()


def test_the_config_is_stored_once_and_old_files_with_a_second_copy_still_load(tmp_path):
    torch.manual_seed(0)
    lm = models.PrefixLM(tiny_config())
    new = checkpoint_dict(lm)
    assert "model_config" not in new and new["hyper_parameters"]["config"] == lm.config.to_dict()
    assert model_config(new) == lm.config.to_dict() and model_kind(new) == "PrefixLM"

    ids = torch.randint(0, lm.config.vocab_size, (2, 8))
    expected = lm.eval().model(ids)
    old = dict(new, model_config=lm.config.to_dict())  # the layout before: both copies
    oldest = dict(old, hyper_parameters={k: v for k, v in new["hyper_parameters"].items() if k != "config"})
    for name, checkpoint in (("old", old), ("oldest", oldest)):
        torch.save(checkpoint, tmp_path / f"{name}.ckpt")
        loaded = load_checkpoint(tmp_path / f"{name}.ckpt")
        assert isinstance(loaded, models.PrefixLM) and loaded.config == lm.config
        assert torch.equal(loaded.model(ids), expected)
    # a base written in the old layout still starts a fine-tune
    tuned = models.PrefixLM(init_from=str(tmp_path / "oldest.ckpt"))
    assert tuned.config == lm.config and torch.equal(tuned.eval().model(ids), expected)
    assert model_config(torch.load(save_checkpoint(tuned, tmp_path / "new.ckpt"), weights_only=True)) == lm.config.to_dict()


def test_one_table_of_kinds_serves_models_checkpoints_estimate_and_data():
    from llm_modules.data.pairs import KINDS as PAIR_KINDS
    from llm_modules.data.preferences import DECODERS as PREFERENCE_KINDS

    names = [kind.class_name for kind in kinds.KINDS.values()]
    assert list(models.KINDS) == names
    for name, cls in models.KINDS.items():
        assert cls.__name__ == name and cls(tiny_config(n_encoder_layers=1)).kind == name
        assert kinds.by_class_name(name).class_name == name
    assert ESTIMATE_KINDS == {kind.key: kind.class_name for kind in kinds.KINDS.values()}
    assert PAIR_KINDS == tuple(k.class_name for k in kinds.KINDS.values() if k.generates)
    assert PREFERENCE_KINDS == tuple(k.class_name for k in kinds.KINDS.values() if k.generates and not k.encoder_decoder)
    assert kinds.by_class_name("RewardModel") is None


def test_a_model_config_is_checked_where_it_is_made_and_when_a_field_changes():
    """One place checks a config: its own constructor, and any later assignment (the model build does
    not check again, since a ModelConfig cannot hold a refused value)."""
    from llm_modules.registry import ConfigError

    config = tiny_config()
    config.eos_token_id = 9  # a valid change is kept
    with pytest.raises(ConfigError, match="n_heads=5 does not divide d_model=32"):
        config.n_heads = 5
    with pytest.raises(ConfigError, match=r"unknown norm 'rmsnrom' \(did you mean 'rmsnorm'\?\)"):
        config.norm = "rmsnrom"
    assert (config.n_heads, config.norm, config.eos_token_id) == (4, "layernorm", 9)  # refused values undone
    assert config == tiny_config(eos_token_id=9)
    models.CausalLM(config)  # builds
