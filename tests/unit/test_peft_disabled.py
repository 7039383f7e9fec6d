"""peft.adapters_disabled: inside the block an adapted model computes exactly its base function
(the frozen reference of DPO and PPO, with no copy of the weights); after it, the adapted one."""

from __future__ import annotations

import copy

import pytest
import torch

from llm_modules import CausalLM, ModelConfig
from llm_modules.nn.lm import DecoderLM
from llm_modules.peft import adapters_disabled, applied_peft, apply_peft
from llm_modules.registry import ConfigError

METHODS = {
    "lora": {"name": "lora", "r": 4, "targets": ["*.q", "*.v", "*.ffn.*"]},
    "adapter": {"name": "adapter", "bottleneck": 8},
    "adapter-parallel": {"name": "adapter", "bottleneck": 8, "placement": "parallel"},
    "prompt": {"name": "prompt", "num_virtual_tokens": 3},
    "ptuning": {"name": "ptuning", "num_virtual_tokens": 3},
    "prefix": {"name": "prefix", "num_virtual_tokens": 3},
    "prefix-plain": {"name": "prefix", "num_virtual_tokens": 3, "reparameterize": False},
}


def base_and_adapted(spec, prefix: bool = False):
    """A seeded llama-tiny, and a copy of it with ``spec`` applied and its new parameters moved
    away from their (often zero-effect) start, so that adapted and base logits differ."""
    torch.manual_seed(0)
    base = DecoderLM(ModelConfig.from_preset("llama-tiny"), prefix=prefix).eval()
    adapted = copy.deepcopy(base)
    apply_peft(adapted, spec)
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in adapted.parameters():
            if p.requires_grad:
                p.add_(0.2 * torch.randn(p.shape, generator=generator).to(p.dtype))
    return base, adapted


def inputs():
    """Two rows, the second left-padded: virtual tokens and masks must step aside for padding too."""
    ids = torch.randint(3, 500, (2, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    return ids.masked_fill(mask == 0, 0), mask


@pytest.mark.parametrize("method", sorted(METHODS))
def test_disabled_is_the_base_and_enabled_comes_back(method):
    base, adapted = base_and_adapted(METHODS[method])
    ids, mask = inputs()
    with torch.no_grad():
        expected_base, before = base(ids, mask), adapted(ids, mask)
        assert not torch.allclose(before, expected_base), "the method must change the function for this test to mean anything"
        with adapters_disabled(adapted) as same:
            assert same is adapted
            inside = adapted(ids, mask)
        after = adapted(ids, mask)
    assert torch.equal(inside, expected_base)
    assert torch.equal(after, before)


@pytest.mark.parametrize("method", ["lora", "prompt", "prefix"])
def test_prefix_lm_rows(method):
    base, adapted = base_and_adapted(METHODS[method], prefix=True)
    ids, mask = inputs()
    lengths = torch.tensor([4, 2])
    with torch.no_grad(), adapters_disabled(adapted):
        assert torch.equal(adapted(ids, mask, lengths), base(ids, mask, lengths))


def test_language_model_and_gradients_flow_after():
    """A LanguageModel works as well as its torch model; no parameter is copied or replaced, and
    the method's parameters still train after the block."""
    torch.manual_seed(0)
    lm = CausalLM(ModelConfig.from_preset("llama-tiny"), peft={"name": "lora", "r": 4}).eval()
    ids, mask = inputs()
    params = {name: p for name, p in lm.named_parameters()}
    with torch.no_grad(), adapters_disabled(lm):
        lm(ids, mask)
    assert {name: p for name, p in lm.named_parameters()} == params
    lm(ids, mask).float().pow(2).mean().backward()
    assert all(p.grad is not None for p in lm.parameters() if p.requires_grad)


def test_restored_after_an_error_and_when_nested():
    _, adapted = base_and_adapted(METHODS["lora"])
    ids, mask = inputs()
    with torch.no_grad():
        before = adapted(ids, mask)
        with pytest.raises(RuntimeError, match="boom"), adapters_disabled(adapted):
            raise RuntimeError("boom")
        with adapters_disabled(adapted):
            with adapters_disabled(adapted):
                pass
            still_base = adapted(ids, mask)
        assert not torch.equal(still_base, before)  # the inner block did not switch the method back on
        assert torch.equal(adapted(ids, mask), before)


def test_no_method_is_its_own_base():
    torch.manual_seed(0)
    model = DecoderLM(ModelConfig.from_preset("llama-tiny")).eval()
    ids, mask = inputs()
    with torch.no_grad():
        expected = model(ids, mask)
        with adapters_disabled(model):
            assert torch.equal(model(ids, mask), expected)


def test_merged_lora_is_refused():
    _, adapted = base_and_adapted(METHODS["lora"])
    method = applied_peft(adapted)[0]
    method.merge(adapted)
    with pytest.raises(ConfigError, match="unmerge"), adapters_disabled(adapted):
        pass
    method.unmerge(adapted)
    with adapters_disabled(adapted):
        pass


def test_merged_soft_prompt_and_prefix_still_switch_off():
    """Folding a P-tuning encoder or a prefix MLP keeps the virtual tokens; switching them off
    still leaves the base."""
    ids, mask = inputs()
    for method in ("ptuning", "prefix"):
        base, adapted = base_and_adapted(METHODS[method])
        applied_peft(adapted)[0].merge(adapted)
        with torch.no_grad(), adapters_disabled(adapted):
            assert torch.equal(adapted(ids, mask), base(ids, mask))
