"""Bottleneck adapters (peft.adapter): zero start, serial/parallel math, gradient flow, base names kept."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from llm_modules import ModelConfig
from llm_modules.nn.lm import DecoderLM, EncoderDecoderLM, EncoderLM
from llm_modules.peft import apply_peft
from llm_modules.peft.adapter import Adapter
from llm_modules.registry import ConfigError

MODELS = {"llama-tiny": DecoderLM, "bert-tiny": EncoderLM, "t5-v1_1-tiny": EncoderDecoderLM}


def build(preset: str = "llama-tiny") -> nn.Module:
    torch.manual_seed(0)
    return MODELS[preset](ModelConfig.from_preset(preset)).eval()


def batch(model: nn.Module) -> dict:
    ids = torch.randint(1, model.config.vocab_size, (2, 6), generator=torch.Generator().manual_seed(1))
    return {"input_ids": ids, "decoder_input_ids": ids[:, :4]} if isinstance(model, EncoderDecoderLM) else {"input_ids": ids}


@pytest.mark.parametrize("placement", ["serial", "parallel"])
@pytest.mark.parametrize("preset", sorted(MODELS))
def test_starts_as_the_base_and_keeps_base_names(preset, placement):
    model = build(preset)
    inputs = batch(model)
    base_keys = set(model.state_dict())
    with torch.no_grad():
        before = model(**inputs)
    method = apply_peft(model, {"name": "adapter", "bottleneck": 8, "placement": placement})
    with torch.no_grad():
        assert torch.equal(model(**inputs), before)
    assert set(model.state_dict()) - method.added_keys == base_keys
    assert {n for n, p in model.named_parameters() if p.requires_grad} == set(method.added_keys)
    assert all(".adapter." in k for k in method.added_keys)
    # two blocks of attn + ffn; T5: two encoder blocks, and two decoder blocks with cross-attention too
    expected = {"llama-tiny": 4, "bert-tiny": 4, "t5-v1_1-tiny": 2 * 2 + 2 * 3}[preset]
    assert sum(isinstance(m, Adapter) for m in model.modules()) == expected


@pytest.mark.parametrize("placement", ["serial", "parallel"])
def test_gradients_reach_every_adapter_and_no_base_weight(placement):
    model = build()
    method = apply_peft(model, {"name": "adapter", "bottleneck": 8, "placement": placement, "activation": "gelu"})
    model.train()
    logits = model(**batch(model))
    logits.float().logsumexp(-1).mean().backward()
    for name, param in model.named_parameters():
        if name in method.added_keys:
            if name.endswith("up.weight"):  # down's gradient goes through the zero up-projection
                assert param.grad is not None and param.grad.abs().sum() > 0, name
        else:
            assert param.grad is None, name


@pytest.mark.parametrize("placement", ["serial", "parallel"])
def test_serial_reads_the_output_parallel_the_input(placement):
    model = build()
    apply_peft(model, {"name": "adapter", "bottleneck": 4, "placement": placement, "where": ["ffn"]})
    ffn = model.stack.layers[0].ffn
    with torch.no_grad():
        nn.init.normal_(ffn.adapter.up.weight)
        x = torch.randn(2, 3, model.config.d_model)
        base = ffn.forward(x)  # forward() itself skips the hook
        source = base if placement == "serial" else x
        torch.testing.assert_close(ffn(x), base + ffn.adapter(source))


def test_where_limits_the_sublayers_and_refuses_absent_ones():
    model = build()
    method = apply_peft(model, {"name": "adapter", "where": "ffn", "bottleneck": 4})
    assert all(".ffn.adapter." in k for k in method.added_keys)
    with pytest.raises(ConfigError, match="no such sublayer"):
        apply_peft(build(), {"name": "adapter", "where": ["cross_attn"]})
    with pytest.raises(ConfigError, match="where: choose among attn, cross_attn, ffn"):
        apply_peft(build(), {"name": "adapter", "where": ["mlp"]})
    with pytest.raises(ConfigError, match="activation must be one of"):
        apply_peft(build(), {"name": "adapter", "activation": "softmax"})
    with pytest.raises(ConfigError, match="already has an adapter"):
        apply_peft(model, {"name": "adapter", "where": "ffn"})


def test_cannot_merge():
    model = build()
    method = apply_peft(model, "adapter")
    with pytest.raises(ConfigError, match="cannot be merged"):
        method.merge(model)


def test_deepcopy_runs_its_own_adapters():
    model = build()
    apply_peft(model, {"name": "adapter", "bottleneck": 4})
    inputs = batch(model)
    with torch.no_grad():
        before = model(**inputs)
        twin = copy.deepcopy(model)
        for module in twin.modules():
            if isinstance(module, Adapter):
                nn.init.normal_(module.up.weight)
        assert torch.equal(model(**inputs), before)
        assert not torch.allclose(twin(**inputs), before)
