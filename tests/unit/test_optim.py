"""Optimizer groups and learning-rate schedules against their closed forms."""

import math

import pytest
import torch

from llm_modules import CausalLM, ConfigError, ModelConfig
from llm_modules.training.optim import OptimConfig, build_optimizer, lr_multiplier, parameter_groups


def tiny_lm(**changes):
    cfg = ModelConfig(vocab_size=40, d_model=16, n_layers=1, n_heads=2, max_seq_len=16, **changes)
    return CausalLM(cfg)


def test_no_weight_decay_on_norms_biases_and_embeddings():
    lm = tiny_lm(norm="layernorm", position="learned", tie_embeddings=False)
    decay, no_decay = parameter_groups(lm.named_parameters(), 0.1)
    names = {id(p): n for n, p in lm.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    kept = {names[id(p)] for p in no_decay["params"]}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(n.endswith("weight") for n in decayed)
    assert not any("norm" in n or n.endswith("bias") or "embed" in n or "position" in n for n in decayed)
    assert "model.head.proj.weight" in decayed  # an untied output projection is a matrix like any other
    assert any("embed.tokens" in n for n in kept) and any(n.endswith("bias") for n in kept)
    assert any("position.table" in n for n in kept)


def test_tied_weights_are_optimized_once():
    lm = tiny_lm(tie_embeddings=True)
    groups = parameter_groups(lm.named_parameters(), 0.1)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len({id(p) for p in lm.parameters()})


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant", "inverse_sqrt"])
def test_warmup_is_linear_to_the_peak(schedule):
    f = lr_multiplier(OptimConfig(schedule=schedule, warmup_steps=10), total_steps=100)
    assert [round(f(s), 6) for s in range(3)] == [0.1, 0.2, 0.3]
    assert f(9) == pytest.approx(1.0)


def test_cosine_decays_to_ten_percent_of_peak():
    f = lr_multiplier(OptimConfig(schedule="cosine", warmup_steps=10, min_lr_ratio=0.1), total_steps=110)
    assert f(10) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert f(110) == pytest.approx(0.1)
    assert f(500) == pytest.approx(0.1)  # stays at the floor past the end


def test_linear_constant_and_inverse_sqrt_closed_forms():
    cfg = dict(warmup_steps=4, min_lr_ratio=0.0)
    linear = lr_multiplier(OptimConfig(schedule="linear", **cfg), total_steps=14)
    assert linear(9) == pytest.approx(0.5) and linear(14) == pytest.approx(0.0)
    constant = lr_multiplier(OptimConfig(schedule="constant", **cfg), total_steps=14)
    assert constant(13) == 1.0
    inv = lr_multiplier(OptimConfig(schedule="inverse_sqrt", **cfg), total_steps=14)
    assert inv(16) == pytest.approx(math.sqrt(4 / 16))


def test_adamw_defaults_follow_the_llm_recipe_and_adafactor_is_available():
    lm = tiny_lm()
    adamw = build_optimizer(lm.named_parameters(), OptimConfig())
    assert isinstance(adamw, torch.optim.AdamW)
    assert adamw.defaults["betas"] == (0.9, 0.95) and adamw.defaults["eps"] == 1e-8
    assert isinstance(build_optimizer(lm.named_parameters(), OptimConfig(optimizer="adafactor")), torch.optim.Adafactor)


@pytest.mark.parametrize("field,value", [("optimizer", "sgdd"), ("schedule", "cosin"), ("lr", -1.0),
                                         ("warmup_steps", -1), ("min_lr_ratio", 2.0)])
def test_bad_optim_values_name_the_field(field, value):
    with pytest.raises(ConfigError, match=f"optim.{field}"):
        OptimConfig(**{field: value})
