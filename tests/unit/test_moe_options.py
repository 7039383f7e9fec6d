"""The `moe` options beyond plain top-k routing, checked by hand-written formulas (transformers'
blocks are compared in tests/parity/test_hf_moe_block.py)."""

from __future__ import annotations

import pytest
import torch

from llm_modules import ACTIVATIONS, CausalLM, ConfigError, ModelConfig
from llm_modules.nn import aux_loss
from llm_modules.nn.moe import pooled_balance_loss
from llm_modules.training.model_flops import matmul_parameters

D = 8


def _moe(**options):
    torch.manual_seed(0)
    spec = {"name": "moe", "expert": "swiglu", "n_experts": 4, "top_k": 2, **options}
    moe = ACTIVATIONS.build(spec, d_model=D, d_ff=12, bias=False)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in moe.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return moe.eval()


def _x(*shape, seed=1):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_unnormalized_top_k_and_gated_shared_expert_by_hand():
    moe = _moe(normalize_top_k=False, shared_d_ff=6)
    tokens = _x(5, D)
    out = moe(tokens)
    for i, token in enumerate(tokens):
        probs = torch.softmax(moe.router.weight @ token, dim=-1)
        chosen = probs.topk(2).indices
        routed = sum(probs[e] * moe.experts[e](token) for e in chosen)  # weights as they are, no renormalizing
        shared = torch.sigmoid(moe.shared_gate.weight @ token) * moe.shared(token)
        torch.testing.assert_close(out[i], routed + shared, atol=1e-5, rtol=1e-5)


def test_ungated_shared_expert_is_added_as_is():
    moe = _moe(shared_d_ff=6, shared_gate=False)
    assert moe.shared_gate is None
    tokens = _x(4, D)
    plain = _moe()
    with torch.no_grad():
        routed = [p for n, p in moe.named_parameters() if not n.startswith("shared")]
        for ours, theirs in zip(plain.parameters(), routed, strict=True):
            ours.copy_(theirs)
    torch.testing.assert_close(moe(tokens), plain(tokens) + moe.shared(tokens))


def test_shared_expert_is_not_routed():
    """Every token runs the shared expert, so it (and the router) count fully in a FLOP count; only
    the routed experts count at top_k / n_experts."""
    moe = _moe(shared_d_ff=6)
    routed = {id(p) for p, share in moe.routed_parameters()}
    assert routed == {id(p) for p in moe.experts.parameters()}
    assert all(share == 0.5 for _, share in moe.routed_parameters())
    experts = sum(p.numel() for p in moe.experts.parameters())
    total = sum(p.numel() for p in moe.parameters())
    assert matmul_parameters(moe) == total - experts + experts * 2 / 4


def test_deepnet_init_reaches_the_shared_expert_not_its_gate():
    moe = _moe(shared_d_ff=6)
    gate, router = moe.shared_gate.weight.clone(), moe.router.weight.clone()
    before = moe.shared.down.weight.clone()
    moe.deepnet_init(0.5)
    assert torch.equal(moe.shared_gate.weight, gate) and torch.equal(moe.router.weight, router)
    assert not torch.equal(moe.shared.down.weight, before)


def test_jitter_noise_only_in_training():
    moe = _moe(jitter_noise=0.3)
    tokens = _x(6, D)
    torch.testing.assert_close(moe(tokens), _moe()(tokens))  # eval: no noise
    moe.train()
    torch.manual_seed(5)
    noisy = moe(tokens)
    torch.manual_seed(5)
    factor = torch.empty_like(tokens).uniform_(0.7, 1.3)
    # the noise scales what both the router and the experts see (Mixtral's router_jitter_noise)
    torch.testing.assert_close(noisy, moe.eval()(tokens * factor))


def _fixed_routing(expert: int):
    """A ``route`` that sends every token to ``expert`` with probability 0.7 (0.1 for the others)."""
    def route(flat):
        probs = torch.full((flat.shape[0], 4), 0.1)
        probs[:, expert] = 0.7
        return probs, torch.ones(flat.shape[0], 1), torch.full((flat.shape[0], 1), expert, dtype=torch.long)
    return route


@pytest.mark.parametrize("form", ["per_layer", "pooled"])
def test_layers_imbalanced_in_opposite_directions(form):
    """Layer a sends every token to expert 0, layer b to expert 3. Per layer, each pays
    0.01 * 4 * 0.7; pooled, F = (1/2, 0, 0, 1/2) and P = (0.4, 0.1, 0.1, 0.4) over both layers, so
    the two imbalances partly cancel: 0.01 * 4 * 0.4."""
    moe_a, moe_b = _moe(aux_loss_form=form, top_k=1), _moe(aux_loss_form=form, top_k=1)
    moe_a.route, moe_b.route = _fixed_routing(0), _fixed_routing(3)
    model = torch.nn.Sequential(moe_a, moe_b)
    model(_x(10, D))
    if form == "per_layer":
        assert moe_a.aux_loss.item() == pytest.approx(0.028) and moe_b.aux_loss.item() == pytest.approx(0.028)
        assert pooled_balance_loss(model) is None
        assert aux_loss(model).item() == pytest.approx(0.056)
    else:
        assert moe_a.aux_loss is None and moe_b.aux_loss is None
        assert pooled_balance_loss(model).item() == pytest.approx(0.016)
        model(_x(10, D))  # the loss was read: a new forward routes again
        assert aux_loss(model).item() == pytest.approx(0.016)


def test_pooled_form_in_an_lm_loss():
    moe = {"name": "moe", "expert": "swiglu", "n_experts": 4, "top_k": 2, "aux_loss_form": "pooled"}
    lm = CausalLM(ModelConfig(vocab_size=40, d_model=16, n_layers=2, n_heads=2, d_ff=24, activation=moe,
                              max_seq_len=16))
    ids = torch.randint(1, 40, (2, 8), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    out = lm.compute_loss({"input_ids": ids, "attention_mask": mask})
    extra = (out["loss"] - out["lm_loss"]).item()
    assert all(block.ffn.routing is None for block in lm.model.stack.layers)  # released once pooled
    lm(ids, mask)
    assert extra == pytest.approx(pooled_balance_loss(lm.model, mask).item(), rel=1e-5)
    assert extra >= 0.01 * 2 - 1e-6  # the pooled minimum: weight * top_k


@pytest.mark.parametrize("options, message", [
    ({"aux_loss_form": "global"}, "aux_loss_form must be one of per_layer, pooled"),
    ({"shared_d_ff": 0}, "shared_d_ff must be a positive integer or null"),
    ({"jitter_noise": 1.5}, r"jitter_noise must be in \[0, 1\)"),
])
def test_refuses_bad_options(options, message):
    with pytest.raises(ConfigError, match=message):
        _moe(**options)
