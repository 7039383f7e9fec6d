"""The per-family features of the core model, each against its closed form: per-projection
biases, QK-norm, attention and logit soft-capping, embedding scale, per-layer sliding windows,
Gemma's (1 + weight) RMSNorm and the post-sublayer layout. (Against transformers, through the
families that have them: tests/parity.)"""

from __future__ import annotations

import math

import pytest
import torch

from llm_modules import CausalLM, ConfigError, ModelConfig
from llm_modules.nn.kv_cache import KVCache
from llm_modules.nn.masks import AttentionMask
from llm_modules.registry import ATTENTIONS, NORMS, RESIDUALS


def tiny(**overrides) -> ModelConfig:
    settings = dict(vocab_size=61, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, norm="rmsnorm",
                    activation="swiglu", position="rope", bias=False, max_seq_len=64, tie_embeddings=False)
    return ModelConfig(**{**settings, **overrides})


def model(seed: int = 0, **overrides) -> CausalLM:
    torch.manual_seed(seed)
    lm = CausalLM(tiny(**overrides)).eval()
    with torch.no_grad():  # norm gains and biases away from their init, so a misplaced one shows
        for name, p in lm.named_parameters():
            if p.ndim == 1:
                p.add_(torch.randn_like(p) * 0.3)
    return lm


IDS = torch.randint(1, 61, (2, 11), generator=torch.Generator().manual_seed(0))


def test_per_projection_biases():
    attn = model(qkv_bias=True, out_bias=False).model.stack.layers[0].attn
    assert all(getattr(attn, p).bias is not None for p in "qkv") and attn.o.bias is None
    attn = model(bias=True, qkv_bias=False).model.stack.layers[0].attn
    assert all(getattr(attn, p).bias is None for p in "qkv") and attn.o.bias is not None
    assert model(bias=True).model.stack.layers[0].ffn.up.bias is not None  # the MLP follows bias (or its option)


@pytest.mark.parametrize("scope", ["head", "all"])
def test_qk_norm_normalizes_queries_and_keys_before_rotation(scope):
    lm = model(qk_norm=scope, position="none", n_layers=1)
    attn = lm.model.stack.layers[0].attn
    x = torch.randn(2, 5, 32)
    q, k = attn.q(x), attn.k(x)

    def rms(t, weight, width):  # RMSNorm (eps = norm_eps) over groups of ``width`` features
        t = t.unflatten(-1, (-1, width))
        return (t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + 1e-5) * weight).flatten(-2)

    if scope == "head":
        expect_q, expect_k = rms(q, attn.q_norm.weight, 8), rms(k, attn.k_norm.weight, 8)
        assert attn.q_norm.weight.shape == (8,) and attn.k_norm.weight.shape == (8,)
    else:
        expect_q, expect_k = rms(q, attn.q_norm.weight, 32), rms(k, attn.k_norm.weight, 16)
        assert attn.q_norm.weight.shape == (32,) and attn.k_norm.weight.shape == (16,)
    seen = {}
    backend = attn.backend
    attn.backend = lambda q, k, v, *a, **kw: seen.update(q=q, k=k) or backend(q, k, v, *a, **kw)
    attn(x, AttentionMask(5, 5, causal=True))
    heads = lambda t: t.unflatten(-1, (-1, 8)).transpose(1, 2)  # noqa: E731
    torch.testing.assert_close(seen["q"], heads(expect_q), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(seen["k"], heads(expect_k), rtol=1e-5, atol=1e-6)


def test_qk_norm_all_refuses_tensor_parallel_and_head_is_replicated():
    from llm_modules.nn.tensor_parallel import TensorParallelPlan, TensorParallelRefusal

    assert isinstance(model(qk_norm="all").model.stack.layers[0].attn.tensor_parallel_plan(), TensorParallelRefusal)
    assert isinstance(model(qk_norm="head").model.stack.layers[0].attn.tensor_parallel_plan(), TensorParallelPlan)


def test_attention_softcap_in_eager_and_flex_and_refused_by_sdpa():
    q, k, v = (torch.randn(2, 4, 6, 8) * 3 for _ in range(3))
    mask = AttentionMask(6, 6, causal=True)
    cap = 2.0
    scores = torch.tanh(q @ k.transpose(-1, -2) * 8**-0.5 / cap) * cap
    scores = scores.masked_fill(~torch.ones(6, 6, dtype=torch.bool).tril(), float("-inf"))
    expected = scores.softmax(-1) @ v
    eager = ATTENTIONS.build("eager", head_dim=8)
    torch.testing.assert_close(eager(q, k, v, mask, None, 8**-0.5, softcap=cap), expected)
    torch.testing.assert_close(ATTENTIONS.build("flex", head_dim=8)(q, k, v, mask, None, 8**-0.5, softcap=cap),
                               expected, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(eager(q, k, v, mask, None, 8**-0.5), expected)
    with pytest.raises(ConfigError, match="attention 'sdpa' cannot soft-cap .*use attention 'eager' or 'flex'"):
        CausalLM(tiny(attention_softcap=50.0, attention="sdpa"))


def test_logit_softcap_bounds_the_logits():
    plain = model(seed=1)
    capped = model(seed=1, logit_softcap=0.5)
    with torch.no_grad():
        raw, out = plain.model(IDS), capped.model(IDS)
    torch.testing.assert_close(out, torch.tanh(raw / 0.5) * 0.5)
    assert out.abs().max() < 0.5


def test_embedding_scale_multiplies_the_embeddings_in_their_dtype():
    plain, scaled = model(seed=2), model(seed=2, embedding_scale=math.sqrt(32))
    with torch.no_grad():
        plain.model.embed.tokens.weight.mul_(torch.tensor(math.sqrt(32)))
        torch.testing.assert_close(scaled.model(IDS), plain.model(IDS))
    bf16 = model(seed=2, embedding_scale=math.sqrt(32)).model.stack.to(torch.bfloat16)
    seen = {}
    bf16.layers[0].register_forward_pre_hook(lambda m, args: seen.update(x=args[0]))
    x = torch.ones(1, 3, 32, dtype=torch.bfloat16)
    bf16(x, AttentionMask(3, 3, causal=True), torch.arange(3).unsqueeze(0))
    assert seen["x"].dtype == torch.bfloat16 and seen["x"][0, 0, 0] == torch.tensor(math.sqrt(32), dtype=torch.bfloat16)


def test_sliding_layers_see_only_their_window():
    """layer_types: a 'sliding' layer equals the all-sliding model's layer, a 'full' one the plain
    model's; so a mixed model equals neither, and each uniform list equals its uniform model."""
    window = dict(sliding_window=3)
    outputs = {}
    for name, overrides in {
        "plain": {}, "all_sliding": window, "list_sliding": {**window, "layer_types": ["sliding", "sliding"]},
        "list_full": {**window, "layer_types": ["full", "full"]},
        "mixed": {**window, "layer_types": ["sliding", "full"]},
    }.items():
        with torch.no_grad():
            outputs[name] = model(seed=3, **overrides).model(IDS)
    torch.testing.assert_close(outputs["list_sliding"], outputs["all_sliding"])
    torch.testing.assert_close(outputs["list_full"], outputs["plain"])
    for other in ("plain", "all_sliding"):
        assert not torch.allclose(outputs["mixed"], outputs[other], atol=1e-4)


def test_mixed_layers_decode_with_a_cache_past_the_window():
    lm = model(seed=4, sliding_window=3, layer_types=["sliding", "full"])
    with torch.no_grad():
        full = lm.model(IDS)
        cache = KVCache(2)
        steps = [lm.model(IDS[:, :5], cache=cache)]
        for t in range(5, IDS.shape[1]):
            steps.append(lm.model(IDS[:, t : t + 1], cache=cache))
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-4, atol=1e-5)


def test_sliding_layers_use_the_encodings_for_sliding_layers(monkeypatch):
    from llm_modules.nn.positions import RoPE

    local = RoPE(8, theta=10.0)
    monkeypatch.setattr(RoPE, "for_sliding_layers", lambda self: local if self is not local else self)
    lm = model(seed=5, sliding_window=4, layer_types=["sliding", "full"])
    stack = lm.model.stack
    assert stack.sliding_position is local
    used = []
    for i, layer in enumerate(stack.layers):
        layer.register_forward_pre_hook(lambda m, args, i=i: used.append((i, args[2])))
    with torch.no_grad():
        lm.model(IDS)
    assert used == [(0, local), (1, stack.position)]


def test_gemma_rmsnorm_is_rmsnorm_with_one_plus_weight():
    gemma, plain = NORMS.build("gemma_rmsnorm", dim=16, eps=1e-6), NORMS.build("rmsnorm", dim=16, eps=1e-6)
    assert torch.equal(gemma.weight, torch.zeros(16))
    with torch.no_grad():
        gemma.weight.normal_()
        plain.weight.copy_(1 + gemma.weight)
    x = torch.randn(3, 16)
    torch.testing.assert_close(gemma(x), plain(x))
    h = x.to(torch.bfloat16)
    expected = (h.float() * torch.rsqrt(h.float().pow(2).mean(-1, keepdim=True) + 1e-6) * (1 + gemma.weight)).bfloat16()
    assert torch.equal(gemma(h), expected)  # the gain applies in fp32, cast once at the end


def test_post_sublayer_layout_normalizes_each_sublayer_output():
    layout = RESIDUALS.build("post_sublayer", make_norm=lambda: NORMS.build("rmsnorm", dim=8, eps=1e-6), n_sublayers=2)
    f, g = torch.nn.Linear(8, 8), torch.nn.Linear(8, 8)
    x = torch.randn(2, 3, 8)
    h = x + layout.norms[0](f(x))
    torch.testing.assert_close(layout(x, [f, g]), h + layout.norms[1](g(h)))
    assert layout.needs_final_norm


@pytest.mark.parametrize("change, message", [
    ({"qk_norm": "heads"}, "qk_norm must be 'head'"),
    ({"attention_softcap": 0}, "attention_softcap must be a positive number"),
    ({"logit_softcap": -1.0}, "logit_softcap must be a positive number"),
    ({"embedding_scale": 0}, "embedding_scale must be a positive number"),
    ({"qkv_bias": "yes"}, "qkv_bias must be true, false or null"),
    ({"layer_types": ["sliding"]}, "one entry per layer"),
    ({"layer_types": ["sliding", "ful"], "sliding_window": 4}, "did you mean 'full'"),
    ({"layer_types": ["sliding", "full"]}, "sliding_window is null"),
])
def test_bad_values_are_refused_naming_the_field(change, message):
    with pytest.raises(ConfigError, match=message):
        tiny(**change)
