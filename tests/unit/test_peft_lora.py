"""LoRA (peft.lora): trains only its matrices, starts at the base function, merges, unloads."""

from __future__ import annotations

import copy
from collections import OrderedDict

import pytest
import torch
from torch import nn

from llm_modules import ModelConfig
from llm_modules.nn.linear import Linear
from llm_modules.nn.lm import DecoderLM, EncoderDecoderLM, EncoderLM
import torch.nn.functional as F

from llm_modules.cli.registry_cmd import catalogue
from llm_modules.peft import LoRA, LoRALinear, adapters_disabled, applied_peft, apply_peft
from llm_modules.peft.wrapped_linear import LinearWrappingMethod, WrappedLinear
from llm_modules.registry import ConfigError

MODELS = {"llama-tiny": DecoderLM, "bert-tiny": EncoderLM, "t5-v1_1-tiny": EncoderDecoderLM}


def build(preset: str = "llama-tiny", seed: int = 0, **overrides) -> nn.Module:
    torch.manual_seed(seed)
    return MODELS[preset](ModelConfig.from_preset(preset, **overrides)).eval()


def batch(model: nn.Module, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, model.config.vocab_size, (2, 7), generator=g)
    return {"input_ids": ids, "decoder_input_ids": ids[:, :5]} if isinstance(model, EncoderDecoderLM) else {"input_ids": ids}


def train_steps(model: nn.Module, steps: int = 3) -> None:
    """A few AdamW steps on random tokens (a real update of whatever requires grad)."""
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for step in range(steps):
        inputs = batch(model, seed=10 + step)
        logits = model(**inputs)
        loss = logits.float().logsumexp(-1).mean() - logits.float()[..., 3].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


def test_registered_with_docs():
    names = {e["name"]: e for e in catalogue()["peft"]}
    assert {"lora", "qlora", "adapter"} <= set(names)
    assert all(names[n]["doc"] and names[n]["provider"] == "llm_modules" for n in ("lora", "qlora", "adapter"))


@pytest.mark.parametrize("preset", sorted(MODELS))
def test_only_lora_trains_and_starts_at_the_base(preset):
    model = build(preset)
    inputs = batch(model)
    with torch.no_grad():
        before = model(**inputs)
    base_keys = set(model.state_dict())
    method = apply_peft(model, {"name": "lora", "r": 4})
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(method.added_keys) and trainable
    assert all(n.endswith((".lora_a", ".lora_b")) for n in trainable)
    assert set(model.state_dict()) - set(method.added_keys) == base_keys  # base names unchanged
    with torch.no_grad():
        assert torch.equal(model(**inputs), before)
    assert applied_peft(model) == (method,)


def test_training_moves_lora_and_not_the_base():
    model = build()
    method = apply_peft(model, {"name": "lora", "r": 4, "targets": ["*.q", "*.v", "*.ffn.down"]})
    snapshot = {k: v.clone() for k, v in model.state_dict().items()}
    train_steps(model)
    after = model.state_dict()
    for key, value in snapshot.items():
        if key in method.added_keys:
            if key.endswith("lora_b"):
                assert not torch.equal(after[key], value), key
        else:
            assert torch.equal(after[key], value), key  # bitwise: frozen base


def test_forward_is_base_plus_scaled_low_rank_update():
    linear = nn.Linear(16, 12)
    layer = LoRALinear(linear, r=4, scale=0.5)
    nn.init.normal_(layer.lora_b)
    x = torch.randn(3, 16)
    expected = x @ (linear.weight + 0.5 * layer.lora_b @ layer.lora_a).T + linear.bias
    torch.testing.assert_close(layer(x), expected)
    assert layer.weight is linear.weight and layer.bias is linear.bias


@pytest.mark.parametrize("preset", sorted(MODELS))
def test_merge_matches_unmerged_and_unmerge_restores(preset):
    model = build(preset)
    method = apply_peft(model, {"name": "lora", "r": 4, "alpha": 8})
    train_steps(model)
    weights = {k: v.clone() for k, v in model.state_dict().items() if k.endswith(".weight")}
    inputs = batch(model)
    with torch.no_grad():
        unmerged = model(**inputs)
        method.merge(model)
        method.merge(model)  # once only: a second merge must not add the update again
        assert method.is_merged(model)
        merged = model(**inputs)
        changed = [k for k, v in weights.items() if not torch.equal(model.state_dict()[k], v)]
        method.unmerge(model)
        restored = model(**inputs)
    torch.testing.assert_close(merged, unmerged, atol=1e-5, rtol=1e-5)
    assert changed and all(k.endswith((".q.weight", ".v.weight")) for k in changed)
    torch.testing.assert_close(restored, unmerged, atol=1e-6, rtol=1e-6)
    for key, value in weights.items():
        torch.testing.assert_close(model.state_dict()[key], value, atol=1e-6, rtol=0)


def test_unload_gives_plain_linears_with_the_base_layout():
    model = build()
    base_keys = list(model.state_dict())
    q_weight = model.stack.layers[0].attn.q.weight
    method = apply_peft(model, {"name": "lora", "r": 4})
    train_steps(model)
    inputs = batch(model)
    with torch.no_grad():
        adapted = model(**inputs)
        method.unload(model)
        plain = model(**inputs)
    torch.testing.assert_close(plain, adapted, atol=1e-5, rtol=1e-5)
    assert list(model.state_dict()) == base_keys
    assert type(model.stack.layers[0].attn.q) is Linear
    assert model.stack.layers[0].attn.q.weight is q_weight  # same Parameter, merged in place
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    assert applied_peft(model) == ()


def test_rslora_scales_by_sqrt_rank():
    assert LoRA(r=16, alpha=8).scale == 0.5
    assert LoRA(r=16, alpha=8, rslora=True).scale == 2.0
    model = build()
    apply_peft(model, {"name": "lora", "r": 16, "alpha": 8, "rslora": True})
    assert model.stack.layers[1].attn.v.scale == 2.0


def test_target_patterns_choose_the_layers():
    model = build()
    apply_peft(model, {"name": "lora", "r": 2, "targets": ["*.k", "*.o", "*.ffn.*"]})
    adapted = {n for n, m in model.named_modules() if isinstance(m, LoRALinear)}
    assert "stack.layers.0.attn.k" in adapted and "stack.layers.1.ffn.gate" in adapted
    assert not any(n.endswith((".q", ".v")) or n == "head.proj" for n in adapted)
    assert len(adapted) == 2 * (2 + 3)


def test_pattern_matching_nothing_names_the_option_and_the_layers():
    model = build()
    with pytest.raises(ConfigError, match=r"targets: pattern '\*\.query' matches no Linear.*stack\.layers\.0\.attn\.q"):
        apply_peft(model, {"name": "lora", "targets": ["*.q", "*.query"]})
    with pytest.raises(ConfigError, match=r"try '\*\.q'"):
        apply_peft(model, {"name": "lora", "targets": "q"})
    with pytest.raises(ConfigError, match="not Linear layers"):
        apply_peft(model, {"name": "lora", "targets": ["*.attn"]})
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    assert all(p.requires_grad for p in model.parameters())  # a refused method leaves the model trainable


def test_bad_options_are_config_errors():
    with pytest.raises(ConfigError, match="did you mean 'r'"):
        apply_peft(build(), {"name": "lora", "rr": 4})
    with pytest.raises(ConfigError, match="rank must be a positive integer"):
        LoRA(r=0)
    with pytest.raises(ConfigError, match="init must be one of"):
        LoRA(init="orthogonal")


def test_tied_head_is_refused_and_double_lora_too():
    model = build("bert-tiny")  # head tied to the token embedding
    with pytest.raises(ConfigError, match="head.proj shares its weight"):
        apply_peft(model, {"name": "lora", "targets": ["head.proj"]})
    apply_peft(model, "lora")
    with pytest.raises(ConfigError, match="already carries LoRA"):
        apply_peft(model, "lora")


def test_directly_built_method_gets_its_registry_name():
    method = apply_peft(build(), LoRA(r=2))
    assert method.name == "lora" and method.describe()["name"] == "lora"


def test_deepcopy_is_independent():
    model = build()
    apply_peft(model, {"name": "lora", "r": 2})
    twin = copy.deepcopy(model)
    with torch.no_grad():
        twin.stack.layers[0].attn.q.lora_b.fill_(0.1)
    inputs = batch(model)
    assert not torch.equal(model(**inputs), twin(**inputs))
    assert model.stack.layers[0].attn.q.lora_b.abs().sum() == 0


def test_dropout_only_in_training():
    layer = LoRALinear(nn.Linear(32, 32), r=4, scale=1.0, dropout=0.5)
    nn.init.normal_(layer.lora_b)
    x = torch.randn(4, 32)
    layer.eval()
    assert torch.equal(layer(x), layer(x))
    layer.train()
    torch.manual_seed(0)
    first = layer(x)
    assert not torch.equal(first, layer(x))


class FullDeltaLinear(WrappedLinear):
    """A toy method's layer: a full-rank additive update D (zero at start); only its own math."""

    def __init__(self, base: nn.Linear):
        super().__init__(base)
        self.delta_w = nn.Parameter(torch.zeros(self.out_features, self.in_features, **self.new_tensor_options()))

    def delta(self, x):
        return F.linear(x, self.delta_w)

    def delta_weight(self):
        return self.delta_w.detach().to(self.weight.dtype)


class FullDelta(LinearWrappingMethod):
    layer_type = FullDeltaLinear

    def __init__(self, targets=("*.q",)):
        self.targets = list(targets)

    def make_layer(self, linear):
        return FullDeltaLinear(linear)


class NoMergeLinear(FullDeltaLinear):
    merge_refusal = "toy: cannot merge; keep it unmerged"


class NoMerge(FullDelta):
    layer_type = NoMergeLinear

    def make_layer(self, linear):
        return NoMergeLinear(linear)


def test_a_new_linear_method_gets_wrap_merge_unmerge_unload_from_the_base():
    """The shared base (peft.wrapped_linear) serves any method that supplies only its delta."""
    model = build()
    base_keys = list(model.state_dict())
    q_weight = model.stack.layers[0].attn.q.weight
    method = apply_peft(model, FullDelta())
    assert method.added_keys == {f"stack.layers.{i}.attn.q.delta_w" for i in range(2)}
    with torch.no_grad():
        for _, layer in method.layers(model):
            layer.delta_w.normal_(0, 0.05)
    inputs = batch(model)
    with torch.no_grad():
        adapted = model(**inputs)
        with adapters_disabled(model):
            base = model(**inputs)
        assert not torch.allclose(adapted, base)
        original = q_weight.clone()
        method.merge(model)
        assert method.is_merged(model)
        torch.testing.assert_close(model(**inputs), adapted, atol=1e-5, rtol=1e-5)
        with pytest.raises(ConfigError, match="merged into the weights"):
            adapters_disabled(model).__enter__()
        method.unmerge(model)
        torch.testing.assert_close(q_weight, original, atol=1e-6, rtol=0)
        method.unload(model)
        torch.testing.assert_close(model(**inputs), adapted, atol=1e-5, rtol=1e-5)
    assert list(model.state_dict()) == base_keys and type(model.stack.layers[0].attn.q) is Linear
    assert model.stack.layers[0].attn.q.weight is q_weight and applied_peft(model) == ()
    apply_peft(model, FullDelta())
    with pytest.raises(ConfigError, match=r"layers\.0\.attn\.q already carries FullDelta"):
        apply_peft(model, "lora")  # one method per linear layer, whichever came first


def test_a_layer_that_cannot_merge_refuses_merge_and_unload():
    model = build()
    method = apply_peft(model, NoMerge())
    with pytest.raises(ConfigError, match="toy: cannot merge"):
        method.merge(model)
    with pytest.raises(ConfigError, match="toy: cannot merge"):
        method.unload(model)
    assert not method.is_merged(model) and applied_peft(model) == (method,)


def test_matches_hugging_face_peft():
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    base = nn.Sequential(OrderedDict(q=nn.Linear(16, 12)))
    ref = peft.get_peft_model(
        copy.deepcopy(base), peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q"], use_rslora=True)
    )
    ours = copy.deepcopy(base)
    apply_peft(ours, {"name": "lora", "r": 4, "alpha": 8, "rslora": True, "targets": ["q"]})
    lora_a = next(p for n, p in ref.named_parameters() if "lora_A" in n)
    lora_b = next(p for n, p in ref.named_parameters() if "lora_B" in n)
    with torch.no_grad():
        nn.init.normal_(lora_b)
        ours.q.lora_a.copy_(lora_a)
        ours.q.lora_b.copy_(lora_b)
    x = torch.randn(5, 16)
    torch.testing.assert_close(ours(x), ref(x))
