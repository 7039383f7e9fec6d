"""Closed-form checks of each building block against math written out by hand in the test.

The expected values are computed from the papers' formulas with elementary tensor ops (or plain
``math``), never by calling the component under test a second way, so a wrong constant or a
swapped convention in ``llm_modules.nn`` shows up here rather than as a slightly worse loss curve.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from _core_helpers import build, training_batch
from llm_modules import ACTIVATIONS, NORMS, POSITIONS
from llm_modules.nn import aux_loss
from llm_modules.nn.attention import Attention
from llm_modules.nn.attention_backends import EagerAttention, SDPAttention
from llm_modules.nn.embedding import TokenEmbedding
from llm_modules.nn.feedforward import GatedMLP, MLP
from llm_modules.nn.masks import AttentionMask
from llm_modules.nn.positions import alibi_slopes, relative_bucket
from llm_modules.nn.residual import deepnorm_constants


def _randomize(module: nn.Module, seed: int = 0) -> nn.Module:
    """Every parameter random (norm gains and biases included), so no term can hide behind a 0 or 1."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            gain_like = name.endswith("weight") and p.ndim == 1  # norm gains: around 1, not 0
            p.copy_(torch.randn(p.shape, generator=g) * 0.5 + (1.0 if gain_like else 0.0))
    return module


def _x(*shape, seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# ---- norms ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bias", [True, False])
def test_layernorm(bias):
    norm = _randomize(NORMS.build({"name": "layernorm", "bias": bias}, dim=8, eps=1e-5))
    x = _x(3, 8)
    mean = x.sum(-1, keepdim=True) / 8
    var = ((x - mean) ** 2).sum(-1, keepdim=True) / 8  # biased variance, as in Ba et al.
    expected = (x - mean) / torch.sqrt(var + 1e-5) * norm.weight
    if bias:
        expected = expected + norm.bias
    else:
        assert norm.bias is None and [n for n, _ in norm.named_parameters()] == ["weight"]
    torch.testing.assert_close(norm(x), expected, atol=1e-5, rtol=1e-5)


def test_rmsnorm():
    norm = _randomize(NORMS.build("rmsnorm", dim=8, eps=1e-6))
    x = _x(3, 8)
    rms = torch.sqrt((x**2).sum(-1, keepdim=True) / 8 + 1e-6)
    torch.testing.assert_close(norm(x), x / rms * norm.weight, atol=1e-5, rtol=1e-5)
    assert [n for n, _ in norm.named_parameters()] == ["weight"]  # no bias, no centring


def test_scalenorm():
    norm = NORMS.build("scalenorm", dim=16)
    assert norm.scale.item() == pytest.approx(4.0)  # g starts at sqrt(d)
    with torch.no_grad():
        norm.scale.fill_(1.7)
    x = _x(3, 16)
    expected = 1.7 * x / torch.sqrt((x**2).sum(-1, keepdim=True))
    torch.testing.assert_close(norm(x), expected, atol=1e-5, rtol=1e-5)


# ---- feed-forward blocks ----------------------------------------------------------------------------------------


def _gelu_exact(v):
    return v * 0.5 * (1.0 + torch.special.erf(v / math.sqrt(2.0)))


def _gelu_tanh(v):
    return 0.5 * v * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (v + 0.044715 * v**3)))


def _linear(layer: nn.Linear, x):
    out = x @ layer.weight.T
    return out if layer.bias is None else out + layer.bias


PLAIN = {
    "relu": ("relu", lambda v: torch.clamp(v, min=0)),
    "gelu": ("gelu", _gelu_exact),
    "gelu_tanh": ({"name": "gelu", "approximate": "tanh"}, _gelu_tanh),
    "swish": ("swish", lambda v: v / (1 + torch.exp(-v))),
    "silu": ("silu", lambda v: v / (1 + torch.exp(-v))),
}
GATED = {
    "glu": ("glu", lambda v: 1 / (1 + torch.exp(-v))),
    "bilinear": ("bilinear", lambda v: v),
    "reglu": ("reglu", lambda v: torch.clamp(v, min=0)),
    "geglu": ("geglu", _gelu_exact),
    "geglu_tanh": ({"name": "geglu", "approximate": "tanh"}, _gelu_tanh),
    "swiglu": ("swiglu", lambda v: v / (1 + torch.exp(-v))),
}


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("name", sorted(PLAIN))
def test_plain_mlp_formula(name, bias):
    spec, act = PLAIN[name]
    ffn = _randomize(ACTIVATIONS.build(spec, d_model=8, d_ff=12, bias=bias))
    assert isinstance(ffn, MLP)
    x = _x(5, 8)
    expected = _linear(ffn.down, act(_linear(ffn.up, x)))
    torch.testing.assert_close(ffn(x), expected, atol=1e-5, rtol=1e-5)
    assert all((m.bias is not None) == bias for m in ffn.modules() if isinstance(m, nn.Linear))


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("name", sorted(GATED))
def test_gated_mlp_formula(name, bias):
    """GLU family (Shazeer 2020): ``down(act(x W) * (x V))``."""
    spec, act = GATED[name]
    ffn = _randomize(ACTIVATIONS.build(spec, d_model=8, d_ff=12, bias=bias))
    assert isinstance(ffn, GatedMLP)
    x = _x(5, 8)
    expected = _linear(ffn.down, act(_linear(ffn.gate, x)) * _linear(ffn.up, x))
    torch.testing.assert_close(ffn(x), expected, atol=1e-5, rtol=1e-5)
    linears = [m for m in ffn.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 3 and all((m.bias is not None) == bias for m in linears)
    if not bias:  # no bias anywhere: zero in, zero out
        assert torch.equal(ffn(torch.zeros(2, 8)), torch.zeros(2, 8))


@pytest.mark.parametrize("d_model", [32, 48, 100, 384, 1000])
def test_default_hidden_sizes_keep_the_parameter_count_of_the_4d_mlp(d_model):
    plain = ACTIVATIONS.build("gelu", d_model=d_model, bias=False)
    gated = ACTIVATIONS.build("swiglu", d_model=d_model, bias=False)
    assert plain.up.out_features == 4 * d_model
    assert gated.up.out_features == gated.gate.out_features == round(2 / 3 * 4 * d_model)
    n_plain = sum(p.numel() for p in plain.parameters())
    n_gated = sum(p.numel() for p in gated.parameters())
    assert n_plain == 8 * d_model * d_model
    assert abs(n_gated - n_plain) <= 3 * d_model  # equal up to rounding to one hidden unit
    explicit = ACTIVATIONS.build("geglu", d_model=d_model, d_ff=7, bias=False)
    assert explicit.up.out_features == 7  # d_ff is used as given


# ---- mixture of experts -------------------------------------------------------------------------------------------


def _moe(top_k=2, n_experts=4, weight=0.01):
    torch.manual_seed(0)
    spec = {"name": "moe", "expert": "relu", "n_experts": n_experts, "top_k": top_k, "aux_loss_weight": weight}
    return _randomize(ACTIVATIONS.build(spec, d_model=8, d_ff=12, bias=True))


@pytest.mark.parametrize("top_k", [1, 2, 3])
def test_moe_output_is_the_hand_routed_mixture(top_k):
    moe = _moe(top_k)
    x = _x(2, 5, 8)
    out = moe(x)
    assert out.shape == x.shape
    tokens = x.reshape(-1, 8)
    for i, token in enumerate(tokens):
        logits = moe.router.weight @ token
        probs = torch.exp(logits) / torch.exp(logits).sum()
        chosen = sorted(range(4), key=lambda e: -probs[e].item())[:top_k]
        norm = sum(probs[e] for e in chosen)
        expected = sum(probs[e] / norm * moe.experts[e](token) for e in chosen)
        torch.testing.assert_close(out.reshape(-1, 8)[i], expected, atol=1e-5, rtol=1e-5)


def test_moe_aux_loss_is_the_switch_formula():
    moe = _moe(top_k=2, weight=0.05)
    x = _x(12, 8)
    moe(x)
    probs = torch.softmax(x @ moe.router.weight.T, dim=-1)
    chosen = probs.topk(2, dim=-1).indices
    f = torch.tensor([(chosen == e).sum().item() / chosen.numel() for e in range(4)])  # share of routed slots
    p = probs.mean(0)  # mean router probability
    expected = 0.05 * 4 * (f * p).sum()
    assert moe.aux_loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert moe.aux_loss.requires_grad  # the router learns to balance through P


def test_uniform_routing_gives_aux_equal_to_weight():
    moe = _moe(top_k=2, weight=0.03)
    with torch.no_grad():
        moe.router.weight.zero_()  # every expert equally likely for every token
    moe(_x(10, 8))
    assert moe.aux_loss.item() == pytest.approx(0.03, rel=1e-6)


def test_moe_aux_loss_is_added_to_the_lm_loss():
    lm = build("CausalLM", activation={"name": "moe", "expert": "swiglu", "n_experts": 4, "top_k": 2})
    out = lm.compute_loss(training_batch("CausalLM"))
    extra = aux_loss(lm.model)
    assert extra is not None and extra.item() > 0
    assert (out["loss"] - out["lm_loss"]).item() == pytest.approx(extra.item(), rel=1e-5)
    # two MoE layers, each >= its weight (the minimum of the Switch loss)
    assert extra.item() >= 2 * 0.01 - 1e-6


def test_moe_refuses_bad_settings():
    from llm_modules import ConfigError

    with pytest.raises(ConfigError, match="cannot itself be 'moe'"):
        ACTIVATIONS.build({"name": "moe", "expert": "moe"}, d_model=8)
    with pytest.raises(ConfigError, match="top_k must be between 1 and n_experts=2"):
        ACTIVATIONS.build({"name": "moe", "n_experts": 2, "top_k": 3}, d_model=8)


# ---- absolute positions ---------------------------------------------------------------------------------------------


def test_sinusoidal_table_values():
    """PE(p, 2i) = sin(p / 10000^(2i/d)), PE(p, 2i+1) = cos(p / 10000^(2i/d)) (Vaswani et al.)."""
    d = 6
    enc = POSITIONS.build("sinusoidal", d_model=d)
    positions = torch.arange(5).unsqueeze(0)
    table = enc.embed(torch.zeros(1, 5, d), positions)[0]
    for p in range(5):
        for i in range(d // 2):
            angle = p / 10000 ** (2 * i / d)
            assert table[p, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
            assert table[p, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)


def test_learned_positions_are_a_table_and_refuse_long_inputs():
    from llm_modules import ConfigError

    enc = POSITIONS.build("learned", d_model=4, max_seq_len=6)
    x = torch.zeros(1, 3, 4)
    out = enc.embed(x, torch.tensor([[0, 2, 5]]))
    torch.testing.assert_close(out[0], enc.table.weight[[0, 2, 5]])
    with pytest.raises(ConfigError, match="max_seq_len=6"):
        enc.embed(torch.zeros(1, 7, 4), torch.arange(7).unsqueeze(0))


# ---- ALiBi ---------------------------------------------------------------------------------------------------------


def test_alibi_slopes_power_of_two():
    assert alibi_slopes(8).tolist() == pytest.approx([2.0**-i for i in range(1, 9)])
    assert alibi_slopes(4).tolist() == pytest.approx([2.0**-2, 2.0**-4, 2.0**-6, 2.0**-8])


def test_alibi_slopes_non_power_of_two_follow_the_paper():
    """n not a power of 2: the 2^k slopes (2^k the largest power below n), then every other slope
    of the 2^(k+1) sequence, up to n (Press et al., reference code)."""
    assert alibi_slopes(6).tolist() == pytest.approx([2**-2, 2**-4, 2**-6, 2**-8, 2**-1, 2**-3])
    twelve = [2.0**-i for i in range(1, 9)] + [2**-0.5, 2**-1.5, 2**-2.5, 2**-3.5]
    assert alibi_slopes(12).tolist() == pytest.approx(twelve)


def test_alibi_bias_is_minus_slope_times_distance():
    enc = POSITIONS.build("alibi", n_heads=8)
    bias = enc.bias(4, 4)
    assert bias.shape == (1, 8, 4, 4)
    assert bias[0, 0, 3, 1].item() == pytest.approx(-0.5 * 2)
    assert bias[0, 2, 1, 3].item() == pytest.approx(-(2**-3) * 2)
    assert bias[0, 7, 2, 2].item() == 0.0


# ---- RoPE ----------------------------------------------------------------------------------------------------------


def _rope(**options):
    return POSITIONS.build({"name": "rope", **options}, head_dim=8)


def _rotate(enc, x, positions):
    """Rotate x (B, H, T, D) as a query at the given (B, T) positions."""
    return enc.rotate(x, x, positions, positions)[0]


def test_rope_closed_form_half_convention():
    """head_dim 4, half convention: pairs (x0, x2) and (x1, x3), angles p*1 and p*theta^(-1/2)."""
    enc = POSITIONS.build("rope", head_dim=4)
    x = _x(4)
    p = 3
    out = _rotate(enc, x.view(1, 1, 1, 4), torch.tensor([[p]])).flatten()
    expected = torch.empty(4)
    for i, freq in ((0, 1.0), (1, 10000 ** (-0.5))):
        a, b = x[i], x[i + 2]
        c, s = math.cos(p * freq), math.sin(p * freq)
        expected[i], expected[i + 2] = a * c - b * s, a * s + b * c
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("interleaved", [False, True])
def test_rope_preserves_norms_and_depends_only_on_relative_position(interleaved):
    enc = _rope(interleaved=interleaved)
    q, k = _x(1, 2, 1, 8, seed=2), _x(1, 2, 1, 8, seed=3)

    def score(m, n):
        qm = _rotate(enc, q, torch.tensor([[m]]))
        kn = _rotate(enc, k, torch.tensor([[n]]))
        torch.testing.assert_close(qm.norm(dim=-1), q.norm(dim=-1))
        return (qm * kn).sum(-1)

    torch.testing.assert_close(score(5, 2), score(13, 10), atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(score(0, 7), score(20, 27), atol=1e-4, rtol=1e-5)
    assert not torch.allclose(score(5, 2), score(5, 3), atol=1e-3)


def test_rope_half_and_interleaved_are_one_feature_permutation_apart():
    """interleaved(P x) = P half(x), with P placing feature i at 2i and feature i + D/2 at 2i + 1."""
    half, inter = _rope(), _rope(interleaved=True)
    perm = torch.tensor([0, 4, 1, 5, 2, 6, 3, 7])  # new feature j takes old feature perm[j]
    x = _x(2, 3, 5, 8)
    positions = torch.arange(5).repeat(2, 1) * 3
    torch.testing.assert_close(_rotate(inter, x[..., perm], positions), _rotate(half, x, positions)[..., perm])
    assert not torch.allclose(_rotate(inter, x, positions), _rotate(half, x, positions))


@pytest.mark.parametrize("interleaved", [False, True])
def test_partial_rope_leaves_the_tail_untouched(interleaved):
    enc = _rope(fraction=0.5, interleaved=interleaved)
    full = _rope(interleaved=interleaved)
    assert enc.rot_dim == 4
    x = _x(1, 2, 6, 8)
    positions = torch.arange(6).unsqueeze(0)
    out = _rotate(enc, x, positions)
    assert torch.equal(out[..., 4:], x[..., 4:])
    assert not torch.allclose(out[..., 1:, :4], x[..., 1:, :4])
    # the rotated part uses frequencies over the rotary dims: theta^(-2i/4), not theta^(-2i/8)
    torch.testing.assert_close(enc.inv_freq, torch.tensor([1.0, 10000 ** -0.5]))
    assert not torch.allclose(out[..., :4], _rotate(full, x, positions)[..., :4])


def test_rope_theta_sets_the_frequencies():
    for theta in (10000.0, 500000.0):
        enc = _rope(theta=theta)
        torch.testing.assert_close(enc.inv_freq, torch.tensor([theta ** (-2 * i / 8) for i in range(4)]))
    x = _x(1, 1, 4, 8)
    positions = torch.arange(4).unsqueeze(0)
    assert not torch.allclose(_rotate(_rope(theta=10000.0), x, positions), _rotate(_rope(theta=500.0), x, positions))
    assert torch.equal(_rotate(_rope(theta=500.0), x, positions)[..., 0, :], x[..., 0, :])  # position 0: identity


# ---- T5 relative buckets --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "relative, bucket",
    [  # relative = key - query; 32 buckets, max distance 128; 16 per direction, 8 exact
        (0, 0), (-3, 3), (3, 19), (-7, 7), (7, 23),
        (-10, 8),  # 8 + floor(log(10/8)/log(128/8) * 8) = 8 + 0
        (-20, 10),  # 8 + floor(log(20/8)/log(16) * 8) = 8 + 2
        (20, 26),
        (-100, 15),  # 8 + floor(7.28) = 15
        (-200, 15), (500, 31),  # beyond max_distance: the last bucket of each side
    ],
)
def test_t5_buckets_bidirectional(relative, bucket):
    assert relative_bucket(torch.tensor([relative]), True, 32, 128).item() == bucket


@pytest.mark.parametrize(
    "relative, bucket",
    [  # unidirectional: keys to the right all share bucket 0; 16 exact buckets
        (0, 0), (5, 0), (-3, 3), (-15, 15),
        (-16, 16),  # 16 + floor(log(16/16)/log(8) * 16) = 16
        (-20, 17),  # 16 + floor(log(1.25)/log(8) * 16) = 16 + 1
        (-64, 26),  # 16 + floor(log(4)/log(8) * 16) = 16 + 10
        (-127, 31), (-128, 31), (-1000, 31),
    ],
)
def test_t5_buckets_unidirectional(relative, bucket):
    assert relative_bucket(torch.tensor([relative]), False, 32, 128).item() == bucket


def test_t5_bias_looks_up_the_bucket_table():
    enc = POSITIONS.build("t5", n_heads=2, bidirectional=False)
    bias = enc.bias(5, 5)
    assert bias.shape == (1, 2, 5, 5)
    # query 4, key 1: distance 3 to the left -> bucket 3; query 1, key 4: right -> bucket 0
    torch.testing.assert_close(bias[0, :, 4, 1], enc.table.weight[3])
    torch.testing.assert_close(bias[0, :, 1, 4], enc.table.weight[0])


# ---- DeepNorm ----------------------------------------------------------------------------------------------------------


def test_deepnorm_constants_match_deepnet():
    n, m = 6, 18
    single = deepnorm_constants(n, 0)
    assert single["encoder"] == pytest.approx(((2 * n) ** 0.25, (8 * n) ** -0.25))
    assert deepnorm_constants(0, m)["decoder"] == pytest.approx(((2 * m) ** 0.25, (8 * m) ** -0.25))
    both = deepnorm_constants(n, m)
    assert both["encoder"] == pytest.approx((0.81 * (n**4 * m) ** (1 / 16), 0.87 * (n**4 * m) ** (-1 / 16)))
    assert both["decoder"] == pytest.approx(((3 * m) ** 0.25, (12 * m) ** -0.25))


@pytest.mark.parametrize(
    "kind, stacks",
    [
        ("CausalLM", {"stack": ((2 * 2) ** 0.25, (8 * 2) ** -0.25)}),
        ("MaskedLM", {"stack": ((2 * 2) ** 0.25, (8 * 2) ** -0.25)}),
        (
            "Seq2SeqLM",
            {
                "encoder": (0.81 * (3**4 * 2) ** (1 / 16), 0.87 * (3**4 * 2) ** (-1 / 16)),
                "decoder": ((3 * 2) ** 0.25, (12 * 2) ** -0.25),
            },
        ),
    ],
)
def test_models_wire_the_deepnorm_constants(kind, stacks):
    lm = build(kind, residual="deepnorm", n_encoder_layers=3)
    for stack, (alpha, beta) in stacks.items():
        for layer in getattr(lm.model, stack).layers:
            assert layer.residual.alpha == pytest.approx(alpha)
            assert layer.residual.init_gain == pytest.approx(beta)


def test_deepnorm_block_is_norm_of_alpha_x_plus_f():
    from llm_modules import RESIDUALS

    layout = RESIDUALS.build("deepnorm", make_norm=lambda: NORMS.build("rmsnorm", dim=4), n_sublayers=2, alpha=3.0)
    x = _x(2, 4)

    def rms(v):
        return v / torch.sqrt((v**2).mean(-1, keepdim=True) + 1e-6)

    f1, f2 = (lambda h: 2 * h), (lambda h: h + 1)
    h = rms(3.0 * x + f1(x))
    torch.testing.assert_close(layout(x, [f1, f2]), rms(3.0 * h + f2(h)), atol=1e-5, rtol=1e-5)


def _layout(name, **options):
    from llm_modules import RESIDUALS

    torch.manual_seed(0)
    return _randomize(RESIDUALS.build({"name": name, **options}, make_norm=lambda: NORMS.build("layernorm", dim=4),
                                      n_sublayers=2))


def _ln(norm, v):
    mean = v.mean(-1, keepdim=True)
    var = ((v - mean) ** 2).mean(-1, keepdim=True)
    return (v - mean) / torch.sqrt(var + 1e-5) * norm.weight + norm.bias


_F1, _F2 = (lambda h: 2 * h + 1), (lambda h: h * h)


def test_pre_post_sandwich_and_parallel_layouts():
    """pre: x + f(N(x)); post: N(x + f(x)); sandwich: x + N_out(f(N_in(x))); parallel: x + f1(N(x)) + f2(N(x))."""
    x = _x(3, 4)
    pre = _layout("pre")
    h = x + _F1(_ln(pre.norms[0], x))
    torch.testing.assert_close(pre(x, [_F1, _F2]), h + _F2(_ln(pre.norms[1], h)), atol=1e-5, rtol=1e-5)

    post = _layout("post")
    h = _ln(post.norms[0], x + _F1(x))
    torch.testing.assert_close(post(x, [_F1, _F2]), _ln(post.norms[1], h + _F2(h)), atol=1e-5, rtol=1e-5)

    sandwich = _layout("sandwich")
    h = x + _ln(sandwich.norms_out[0], _F1(_ln(sandwich.norms_in[0], x)))
    expected = h + _ln(sandwich.norms_out[1], _F2(_ln(sandwich.norms_in[1], h)))
    torch.testing.assert_close(sandwich(x, [_F1, _F2]), expected, atol=1e-5, rtol=1e-5)

    parallel = _layout("parallel")
    assert len(parallel.norms) == 1
    n = _ln(parallel.norms[0], x)
    torch.testing.assert_close(parallel(x, [_F1, _F2]), x + _F1(n) + _F2(n), atol=1e-5, rtol=1e-5)

    neox = _layout("parallel", shared_norm=False)
    expected = x + _F1(_ln(neox.norms[0], x)) + _F2(_ln(neox.norms[1], x))
    torch.testing.assert_close(neox(x, [_F1, _F2]), expected, atol=1e-5, rtol=1e-5)

    # pre-norm-style stacks end with a final norm; post-norm-style ones are already normalized
    assert [_layout(n).needs_final_norm for n in ("pre", "post", "sandwich", "deepnorm", "parallel")] == [
        True, False, True, False, True]


def test_stacks_end_with_a_final_norm_only_for_pre_norm_layouts():
    for residual, final in (("pre", True), ("sandwich", True), ("parallel", True), ("post", False), ("deepnorm", False)):
        lm = build("CausalLM", residual=residual)
        assert isinstance(lm.model.stack.final_norm, nn.Identity) is not final, residual


def test_deepnet_init_scales_v_o_ffn_by_beta_and_leaves_q_k_at_gain_one():
    """Xavier-normal std = gain * sqrt(2 / (fan_in + fan_out)); DeepNet: gain beta on v, o and the
    FFN, gain 1 on q and k. Measured on a wider model so the sample std is within a few percent."""
    torch.manual_seed(0)
    lm = build("CausalLM", d_model=128, n_heads=4, n_layers=2, residual="deepnorm", activation="gelu")
    beta = (8 * 2) ** -0.25
    layer = lm.model.stack.layers[1]

    def xavier(w, gain):
        fan_out, fan_in = w.shape
        return gain * math.sqrt(2.0 / (fan_in + fan_out))

    for proj, gain in ((layer.attn.q, 1.0), (layer.attn.k, 1.0), (layer.attn.v, beta), (layer.attn.o, beta),
                       (layer.ffn.up, beta), (layer.ffn.down, beta)):
        assert proj.weight.std().item() == pytest.approx(xavier(proj.weight, gain), rel=0.06)
    # the pre-norm default is the plain scaled normal init instead
    plain = build("CausalLM", d_model=128, n_heads=4, n_layers=2, residual="pre", activation="gelu")
    assert plain.model.stack.layers[1].attn.q.weight.std().item() == pytest.approx(0.02, rel=0.06)
    assert plain.model.stack.layers[1].attn.o.weight.std().item() == pytest.approx(0.02 / math.sqrt(4), rel=0.06)


# ---- embeddings ----------------------------------------------------------------------------------------------------------


def test_glm_embedding_gradient_shrink():
    """a*e + (1-a)*e.detach(): the same forward value, a times the gradient (GLM-130B)."""
    torch.manual_seed(0)
    plain = TokenEmbedding(20, 8)
    shrunk = TokenEmbedding(20, 8, grad_scale=0.1)
    shrunk.load_state_dict(plain.state_dict())
    ids = torch.tensor([[1, 2, 3, 2]])
    weights = _x(1, 4, 8)
    a, b = plain(ids), shrunk(ids)
    torch.testing.assert_close(a, b)
    (a * weights).sum().backward()
    (b * weights).sum().backward()
    torch.testing.assert_close(shrunk.tokens.weight.grad, 0.1 * plain.tokens.weight.grad)
    assert plain.tokens.weight.grad.abs().sum() > 0
    lm = build("CausalLM", embedding_grad_scale=0.25)
    assert lm.model.embed.grad_scale == 0.25


# ---- attention: heads, scale, masks -------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", [EagerAttention(), SDPAttention()], ids=["eager", "sdpa"])
@pytest.mark.parametrize("kv_heads", [1, 2])
def test_gqa_and_mqa_equal_mha_with_repeated_kv_heads(backend, kv_heads):
    torch.manual_seed(0)
    grouped = Attention(16, 4, kv_heads, 4, True, backend)
    assert grouped.k.weight.shape == grouped.v.weight.shape == (kv_heads * 4, 16)
    assert grouped.q.weight.shape == (16, 16)
    full = Attention(16, 4, 4, 4, True, backend)
    group = 4 // kv_heads
    with torch.no_grad():
        for name in ("q", "o"):
            getattr(full, name).load_state_dict(getattr(grouped, name).state_dict())
        for name in ("k", "v"):  # query head h reads kv head h // group
            w = getattr(grouped, name).weight.view(kv_heads, 4, 16).repeat_interleave(group, 0).reshape(16, 16)
            bias = getattr(grouped, name).bias.view(kv_heads, 4).repeat_interleave(group, 0).reshape(16)
            getattr(full, name).weight.copy_(w)
            getattr(full, name).bias.copy_(bias)
    x = _x(2, 5, 16)
    mask = AttentionMask(5, 5, causal=True)
    out = grouped(x, mask)
    assert out.shape == (2, 5, 16)
    torch.testing.assert_close(out, full(x, mask), atol=1e-5, rtol=1e-5)


def test_n_kv_heads_shapes_in_a_model():
    lm = build("CausalLM", n_heads=4, n_kv_heads=1)
    attn = lm.model.stack.layers[0].attn
    assert attn.k.weight.shape == (8, 32) and attn.v.weight.shape == (8, 32) and attn.q.weight.shape == (32, 32)
    assert lm(torch.randint(0, 50, (2, 6))).shape == (2, 6, 50)


def _hand_attention(x, attn: Attention, scale: float, mask: torch.Tensor):
    """Single-token-loop attention: softmax(scale * q.k) over the allowed keys, then the output projection."""
    b, t, _ = x.shape
    q = _linear(attn.q, x).view(b, t, attn.n_heads, attn.head_dim)
    k = _linear(attn.k, x).view(b, t, attn.n_heads, attn.head_dim)
    v = _linear(attn.v, x).view(b, t, attn.n_heads, attn.head_dim)
    out = torch.zeros(b, t, attn.n_heads, attn.head_dim)
    for bi in range(b):
        for h in range(attn.n_heads):
            for i in range(t):
                keys = [j for j in range(t) if mask[i, j]]
                scores = torch.stack([scale * (q[bi, i, h] * k[bi, j, h]).sum() for j in keys])
                weights = torch.exp(scores - scores.max())
                weights = weights / weights.sum()
                out[bi, i, h] = sum(w * v[bi, j, h] for w, j in zip(weights, keys))
    return _linear(attn.o, out.reshape(b, t, -1))


@pytest.mark.parametrize("backend", [EagerAttention(), SDPAttention()], ids=["eager", "sdpa"])
@pytest.mark.parametrize("scale", [None, 1.0, 0.05])
def test_attention_scale(backend, scale):
    torch.manual_seed(0)
    attn = Attention(8, 2, 2, 4, True, backend, scale=scale)
    x = _x(1, 4, 8) * 3
    causal = torch.tril(torch.ones(4, 4, dtype=torch.bool))
    expected = _hand_attention(x, attn, 0.5 if scale is None else scale, causal)
    torch.testing.assert_close(attn(x, AttentionMask(4, 4, causal=True)), expected, atol=1e-5, rtol=1e-5)


def test_model_attention_scale_reaches_every_layer():
    lm = build("Seq2SeqLM", attention_scale=1.0)
    scales = {m.scale for m in lm.modules() if isinstance(m, Attention)}
    assert scales == {1.0}
    assert {m.scale for m in build("CausalLM").modules() if isinstance(m, Attention)} == {1 / math.sqrt(8)}


def _grid(n):
    return [(q, k) for q in range(n) for k in range(n)]


def _hand_mask(n, rule):
    m = torch.zeros(n, n, dtype=torch.bool)
    for q, k in _grid(n):
        m[q, k] = rule(q, k)
    return m


@pytest.mark.parametrize(
    "options, rule",
    [
        ({"causal": True}, lambda q, k: k <= q),
        ({"causal": True, "window": 3}, lambda q, k: k <= q and q - k < 3),
        ({"window": 2}, lambda q, k: abs(q - k) < 2),
        # Sparse Transformer "fixed" (Child et al.): own block of l=3, plus the last column of each block
        ({"causal": True, "stride": 3}, lambda q, k: k <= q and (q // 3 == k // 3 or k % 3 == 2)),
        ({"stride": 4}, lambda q, k: q // 4 == k // 4 or k % 4 == 3),
        ({"causal": True, "prefix_lengths": torch.tensor([3])}, lambda q, k: k <= q or k < 3),
    ],
    ids=["causal", "causal-window", "window", "causal-stride", "stride", "prefix"],
)
def test_structured_masks_match_hand_built_ones(options, rule):
    mask = AttentionMask(9, 9, **options).dense()
    assert mask.shape == (1, 1, 9, 9)
    assert torch.equal(mask[0, 0], _hand_mask(9, rule))


def test_padding_and_positions_in_masks():
    """Key padding hides keys; with positions, the stride blocks follow real-token positions, and a
    query that sees nothing (left padding) is opened so softmax stays finite."""
    padding = torch.tensor([[False, False, True, True, True, True, True]])
    positions = (padding.long().cumsum(-1) - 1).clamp_min(0)
    mask = AttentionMask(7, 7, causal=True, key_padding=padding, stride=2, positions=positions).dense()[0, 0]
    real = _hand_mask(5, lambda q, k: k <= q and (q // 2 == k // 2 or k % 2 == 1))
    assert torch.equal(mask[2:, 2:], real)
    assert not mask[2:, :2].any()  # padding keys are never visible to real queries
    assert mask[:2].any(-1).all()  # padding queries still see something: softmax stays finite
    # Without positions, a left-padding query sees no key at all and its row is opened instead.
    raw = AttentionMask(7, 7, causal=True, key_padding=padding).dense()[0, 0]
    assert raw[0].all() and raw[1].all() and torch.equal(raw[2:, 2:], torch.tril(torch.ones(5, 5, dtype=torch.bool)))


def test_dense_mask_of_a_cross_attention_with_padding():
    padding = torch.tensor([[True, True, False], [True, True, True]])
    mask = AttentionMask(4, 3, key_padding=padding).dense()
    assert mask.shape == (2, 1, 4, 3)
    assert torch.equal(mask[0, 0], torch.tensor([[True, True, False]] * 4))
    assert mask[1].all()


def test_bias_flag_switches_every_projection_bias():
    for bias in (True, False):
        lm = build("Seq2SeqLM", bias=bias, activation="swiglu")
        linears = [(n, m) for n, m in lm.model.named_modules() if isinstance(m, nn.Linear) and not n.startswith("head")]
        assert len(linears) > 10
        assert all((m.bias is not None) == bias for _, m in linears), [n for n, m in linears if (m.bias is not None) != bias]


def test_embedding_options():
    """Tied or untied head, BLOOM's embedding norm, BERT's token types, the LM head bias."""
    tied, untied = build("CausalLM", tie_embeddings=True), build("CausalLM", tie_embeddings=False)
    assert tied.model.head.proj.weight is tied.model.embed.tokens.weight
    assert untied.model.head.proj.weight is not untied.model.embed.tokens.weight
    assert untied.num_parameters() - tied.num_parameters() == 50 * 32

    normed = build("CausalLM", embedding_norm=True, position="none", norm="rmsnorm")
    captured = {}
    normed.model.stack.layers[0].register_forward_pre_hook(lambda m, args: captured.update(x=args[0]))
    ids = torch.randint(2, 50, (1, 5))
    with torch.no_grad():
        normed(ids)
        e = normed.model.embed.tokens.weight[ids]
    torch.testing.assert_close(captured["x"], e / torch.sqrt((e**2).mean(-1, keepdim=True) + 1e-5))

    bert = build("MaskedLM", type_vocab_size=2)
    with torch.no_grad():
        a = bert(ids, token_type_ids=torch.zeros_like(ids))
        b = bert(ids, token_type_ids=torch.ones_like(ids))
        assert torch.equal(bert(ids), a)  # no token types = type 0
    assert (a - b).abs().max() > 1e-4

    head_bias = build("CausalLM", lm_head_bias=True)
    assert head_bias.model.head.proj.bias is not None and build("CausalLM").model.head.proj.bias is None
