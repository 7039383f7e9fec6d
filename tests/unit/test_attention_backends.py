"""Attention backends compute the same thing, and refuse what they cannot compute.

``eager`` is the reference (plain torch ops, any mask, any bias). ``sdpa`` must agree with it to
1e-5 in outputs and gradients for every mask and bias the models produce; ``flex`` must agree in the
forward pass (torch 2.13 has no FlexAttention backward on CPU). A backend that cannot serve a
combination must fail when the model is built, naming the combination, never compute something else.
"""

from __future__ import annotations

import pytest
import torch

from _core_helpers import KINDS, build, builtin_names, run, same_weights, tiny_config
from llm_modules import ATTENTIONS, CausalLM, ConfigError, MaskedLM, PrefixLM, Seq2SeqLM
from llm_modules.nn.attention_backends import AttentionBackend, EagerAttention, FlexAttention, SDPAttention
from llm_modules.nn.masks import AttentionMask
from llm_modules.nn.positions import alibi_slopes

B, H, HKV, T, D = 2, 4, 2, 7, 8

_padding = torch.tensor([[True] * 7, [False, False, True, True, True, True, True]])
_positions = (_padding.long().cumsum(-1) - 1).clamp_min(0)
MASKS = {
    "none": dict(),
    "causal": dict(causal=True),
    "prefix": dict(causal=True, prefix_lengths=torch.tensor([3, 5])),
    "padding": dict(key_padding=_padding),
    "causal-padding": dict(causal=True, key_padding=_padding, positions=_positions),
    "window": dict(causal=True, window=3),
    "bidirectional-window": dict(window=2),
    "stride": dict(causal=True, stride=3),
}


def _bias(kind):
    if kind == "none":
        return None
    if kind == "alibi":
        distance = (torch.arange(T).view(-1, 1) - torch.arange(T).view(1, -1)).abs().float()
        return -alibi_slopes(H).view(1, H, 1, 1) * distance
    return torch.randn(1, H, T, T, generator=torch.Generator().manual_seed(7))  # a learned (T5-like) bias


def _qkv(seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, T, D, generator=g).requires_grad_()
    k = torch.randn(B, HKV, T, D, generator=g).requires_grad_()
    v = torch.randn(B, HKV, T, D, generator=g).requires_grad_()
    return q, k, v


def _real_rows(mask: AttentionMask) -> torch.Tensor:
    """(B, 1, T, 1) True where a query has at least one visible key before rows are opened."""
    b = torch.arange(mask.batch_size).view(-1, 1, 1, 1)
    q = torch.arange(mask.q_len).view(1, 1, -1, 1)
    k = torch.arange(mask.k_len).view(1, 1, 1, -1)
    return mask.allows(b, q, k).expand(mask.batch_size, 1, mask.q_len, mask.k_len).any(-1, keepdim=True)


@pytest.mark.parametrize("bias", ["none", "alibi", "learned"])
@pytest.mark.parametrize("mask", sorted(MASKS))
def test_sdpa_matches_eager_outputs_and_gradients(mask, bias):
    """GQA shapes (4 query heads over 2 kv heads) with every mask and bias kind."""
    m = AttentionMask(T, T, **MASKS[mask])
    outs, grads = [], []
    for backend in (EagerAttention(), SDPAttention()):
        q, k, v = _qkv()
        out = backend(q, k, v, m, _bias(bias), 0.3)
        (out * torch.linspace(-1, 1, D)).sum().backward()
        outs.append(out.detach())
        grads.append([t.grad for t in (q, k, v)])
    assert outs[0].shape == (B, H, T, D)
    torch.testing.assert_close(outs[1], outs[0], atol=1e-5, rtol=1e-5)
    for g_sdpa, g_eager in zip(grads[1], grads[0]):
        torch.testing.assert_close(g_sdpa, g_eager, atol=1e-5, rtol=1e-5)


def test_sdpa_cross_attention_matches_eager():
    g = torch.Generator().manual_seed(1)
    q = torch.randn(B, H, 5, D, generator=g)
    k, v = torch.randn(B, H, 9, D, generator=g), torch.randn(B, H, 9, D, generator=g)
    m = AttentionMask(5, 9, key_padding=torch.arange(9).expand(B, 9) < torch.tensor([[9], [4]]))
    torch.testing.assert_close(SDPAttention()(q, k, v, m, None, 0.35), EagerAttention()(q, k, v, m, None, 0.35),
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("bias", ["none", "alibi", "learned"])
@pytest.mark.parametrize("mask", sorted(MASKS))
def test_flex_forward_matches_eager_on_real_rows(mask, bias):
    m = AttentionMask(T, T, **MASKS[mask])
    q, k, v = (t.detach() for t in _qkv())
    with torch.no_grad():
        ref = EagerAttention()(q, k, v, m, _bias(bias), 0.3)
        out = FlexAttention()(q, k, v, m, _bias(bias), 0.3)
    real = _real_rows(m).expand_as(ref)  # fully masked rows are padding: flex returns zeros there
    torch.testing.assert_close(out[real], ref[real], atol=1e-5, rtol=1e-5)


def test_sdpa_uses_the_fused_causal_path_only_without_bias_or_structure(monkeypatch):
    calls = []
    original = torch.nn.functional.scaled_dot_product_attention

    def spy(*args, **kwargs):
        calls.append((kwargs.get("is_causal", False), kwargs.get("attn_mask") is not None))
        return original(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    q, k, v = (t.detach() for t in _qkv())
    SDPAttention()(q, k, v, AttentionMask(T, T, causal=True), None, 0.3)
    SDPAttention()(q, k, v, AttentionMask(T, T, causal=True), _bias("alibi"), 0.3)
    SDPAttention()(q, k, v, AttentionMask(T, T, causal=True, window=2), None, 0.3)
    assert calls == [(True, False), (False, True), (False, True)]


# ---- whole models --------------------------------------------------------------------------------------------------


def _model_inputs(kind):
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(2, 50, (2, 10), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding in row 1
    return ids, mask, torch.tensor([4, 2])


@pytest.mark.parametrize("extra", [{}, {"sliding_window": 4}, {"sparse_stride": 3}, {"n_kv_heads": 1}],
                         ids=["plain", "window", "stride", "mqa"])
@pytest.mark.parametrize("position", ["t5", "alibi", "rope", "learned"])
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_models_agree_eager_vs_sdpa_with_padding(kind, position, extra):
    eager = build(kind, position=position, attention="eager", **extra)
    sdpa = same_weights(eager, kind, position=position, attention="sdpa", **extra)
    ids, mask, prefix = _model_inputs(kind)
    outs = []
    for lm in (eager, sdpa):
        logits = run(lm, ids, mask, prefix_lengths=prefix)
        (logits * mask.unsqueeze(-1)).pow(2).sum().backward()
        outs.append((logits.detach(), {n: p.grad for n, p in lm.named_parameters() if p.grad is not None}))
    torch.testing.assert_close(outs[1][0], outs[0][0], atol=1e-5, rtol=1e-5)
    assert outs[0][1].keys() == outs[1][1].keys() and len(outs[0][1]) > 10
    for name, grad in outs[0][1].items():
        torch.testing.assert_close(outs[1][1][name], grad, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("position", ["t5", "alibi", "rope", "sinusoidal"])
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_flex_model_forward_matches_eager_on_real_positions(kind, position):
    eager = build(kind, position=position, attention="eager", sliding_window=6)
    flex = same_weights(eager, kind, position=position, attention="flex", sliding_window=6)
    ids, mask, prefix = _model_inputs(kind)
    with torch.no_grad():
        ref, out = run(eager, ids, mask, prefix_lengths=prefix), run(flex, ids, mask, prefix_lengths=prefix)
    real = mask.bool()
    torch.testing.assert_close(out[real], ref[real], atol=1e-5, rtol=1e-5)


def test_flex_refuses_backward_on_cpu_with_a_clear_error():
    lm = build("CausalLM", attention="flex").train()
    ids = torch.randint(2, 50, (2, 8))
    with pytest.raises(RuntimeError, match=r"attention 'flex' has no backward on CPU.*'sdpa'"):
        lm(ids).sum().backward()
    with torch.no_grad():  # inference on CPU is fine
        assert lm(ids).shape == (2, 8, 50)


# ---- refused combinations -----------------------------------------------------------------------------------------


@pytest.fixture
def limited_backends():
    """Two deliberately limited backends, registered for one test and removed after it."""

    class NoBias(AttentionBackend):
        """A backend without additive bias (test only)."""

        name = "test-nobias"
        supports_bias = False

        def __call__(self, q, k, v, mask, bias, scale, dropout=0.0):
            assert bias is None
            return SDPAttention()(q, k, v, mask, None, scale, dropout)

    class CausalOnly(AttentionBackend):
        """A backend for plain causal attention only (test only)."""

        name = "test-causal-only"
        supports_masks = False

        def __call__(self, q, k, v, mask, bias, scale, dropout=0.0):
            return SDPAttention()(q, k, v, mask, bias, scale, dropout)

    ATTENTIONS.register("test-nobias")(NoBias)
    ATTENTIONS.register("test-causal-only")(CausalOnly)
    yield
    ATTENTIONS.unregister("test-nobias")
    ATTENTIONS.unregister("test-causal-only")


def _positions(adds_score_bias: bool) -> list[str]:
    """Built-in encodings by their declared ``adds_score_bias`` (built once each, to read it)."""
    return [name for name in builtin_names("position")
            if CausalLM(tiny_config(position=name)).model.stack.position.adds_score_bias == adds_score_bias]


BIAS_POSITIONS, OTHER_POSITIONS = _positions(True), _positions(False)


def test_positions_split_into_both_groups():
    assert BIAS_POSITIONS and OTHER_POSITIONS


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("position", BIAS_POSITIONS)
def test_backend_without_bias_is_refused_for_bias_positions(limited_backends, kind, position):
    with pytest.raises(ConfigError) as err:
        KINDS[kind](tiny_config(attention="test-nobias", position=position))
    text = str(err.value)
    assert "attention 'test-nobias'" in text and f"position '{position}'" in text
    assert "'sdpa'" in text  # and what to use instead


def test_backend_without_bias_serves_other_positions(limited_backends):
    for position in OTHER_POSITIONS:
        lm = CausalLM(tiny_config(attention="test-nobias", position=position))
        assert lm(torch.randint(2, 50, (1, 6))).shape == (1, 6, 50)


def test_causal_only_backend_is_refused_where_a_model_needs_more(limited_backends):
    lm = CausalLM(tiny_config(attention="test-causal-only", position="rope"))
    assert lm(torch.randint(2, 50, (1, 6))).shape == (1, 6, 50)
    cases = [
        (MaskedLM, {}, "bidirectional attention"),
        (PrefixLM, {}, "bidirectional attention"),
        (Seq2SeqLM, {}, "bidirectional attention"),
        (CausalLM, {"sliding_window": 4}, "sliding_window"),
        (CausalLM, {"sparse_stride": 4}, "sparse_stride"),
    ]
    for cls, extra, reason in cases:
        with pytest.raises(ConfigError, match=rf"attention 'test-causal-only' supports only plain causal.*{reason}"):
            cls(tiny_config(attention="test-causal-only", **extra))


def test_limited_backends_are_gone_after_the_fixture():
    assert "test-nobias" not in ATTENTIONS.names() and "test-causal-only" not in ATTENTIONS.names()


def test_flex_with_attention_dropout_is_refused():
    with pytest.raises(ConfigError, match=r"attention 'flex' has no attention dropout.*attention_dropout: 0.0"):
        CausalLM(tiny_config(attention="flex", attention_dropout=0.1))


@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
def test_parallel_residual_with_an_encoder_decoder_is_refused(norm):
    with pytest.raises(ConfigError, match=r"residual 'parallel'.*cross-attention.*'pre'"):
        Seq2SeqLM(tiny_config(residual="parallel", norm=norm))
    for cls in (CausalLM, PrefixLM, MaskedLM):  # the single-stack kinds are fine
        assert cls(tiny_config(residual="parallel", norm=norm)) is not None


def test_other_invalid_combinations_are_refused_at_build_or_first_use():
    with pytest.raises(ConfigError, match="rotary dims"):
        CausalLM(tiny_config(position={"name": "rope", "fraction": 0.125}))  # head_dim 8 -> 1 rotary dim
    with pytest.raises(ConfigError, match="cannot itself be 'moe'"):
        CausalLM(tiny_config(activation={"name": "moe", "expert": "moe"}))
    with pytest.raises(ConfigError, match=r"max_seq_len=8"):
        CausalLM(tiny_config(position="learned", max_seq_len=8))(torch.randint(2, 50, (1, 9)))
    with pytest.raises(ConfigError, match="must divide n_heads"):
        CausalLM(tiny_config(n_heads=4, n_kv_heads=3))
