"""The `moe` feed-forward against transformers' own MoE blocks (Mixtral, Qwen2-MoE), with the same
weights: routing bit for bit in float32, block outputs in float32 and bfloat16, and the pooled
load-balancing loss against ``load_balancing_loss_func``."""

from __future__ import annotations

import pytest
import torch

import transformers
from transformers.models.mixtral.modeling_mixtral import (
    MixtralSparseMoeBlock,
    MixtralTopKRouter,
    load_balancing_loss_func,
)
from transformers.models.qwen2_moe.modeling_qwen2_moe import Qwen2MoeSparseMoeBlock, Qwen2MoeTopKRouter

from llm_modules import ACTIVATIONS, CausalLM, ModelConfig
from llm_modules.nn import aux_loss
from llm_modules.nn.moe import pooled_balance_loss

D, F, SHARED, E, K = 16, 24, 20, 6, 2

pytestmark = pytest.mark.filterwarnings("ignore:.*ExpertsInterface.*")


def _random_(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return module


def _tokens(seed: int = 1) -> torch.Tensor:
    return torch.randn(3, 7, D, generator=torch.Generator().manual_seed(seed))


def _ours(**options) -> torch.nn.Module:
    spec = {"name": "moe", "expert": "swiglu", "n_experts": E, "top_k": K, **options}
    return ACTIVATIONS.build(spec, d_model=D, d_ff=F, bias=False).eval()


def _copy_experts(ours, experts) -> None:
    """transformers 5 keeps experts fused: gate_up_proj (E, 2F, D) = [gate; up], down_proj (E, D, F)."""
    with torch.no_grad():
        for j, expert in enumerate(ours.experts):
            gate, up = experts.gate_up_proj[j].chunk(2, dim=0)
            expert.gate.weight.copy_(gate)
            expert.up.weight.copy_(up)
            expert.down.weight.copy_(experts.down_proj[j])


@pytest.mark.parametrize("normalize", [True, False])
def test_routing_is_transformers_bit_for_bit_in_float32(normalize):
    """softmax -> top-k -> (renormalize): the same weights and experts, exactly."""
    if normalize:
        config = transformers.MixtralConfig(hidden_size=D, num_local_experts=E, num_experts_per_tok=K)
        theirs = MixtralTopKRouter(config)
    else:
        theirs = Qwen2MoeTopKRouter(transformers.Qwen2MoeConfig(hidden_size=D, num_experts=E, num_experts_per_tok=K))
    _random_(theirs)
    ours = _ours(normalize_top_k=normalize)
    with torch.no_grad():
        ours.router.weight.copy_(theirs.weight)
    flat = _tokens().reshape(-1, D)
    _, their_weights, their_experts = theirs(flat)
    _, our_weights, our_experts = ours.route(flat)
    assert torch.equal(our_experts, their_experts)
    assert torch.equal(our_weights, their_weights)
    assert torch.allclose(our_weights.sum(-1), torch.ones(flat.shape[0])) == normalize


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_mixtral_block(dtype):
    """Mixtral keeps the routing weights in float32 (``fp32_combine``): equal in bfloat16 too;
    rounding them first, as Qwen-MoE does, is not (the option is needed)."""
    theirs = _random_(MixtralSparseMoeBlock(transformers.MixtralConfig(
        hidden_size=D, intermediate_size=F, num_local_experts=E, num_experts_per_tok=K)))
    expected = theirs.to(dtype)(_tokens().to(dtype))
    for fp32_combine in (True, False):
        ours = _ours(fp32_combine=fp32_combine)
        with torch.no_grad():
            ours.router.weight.copy_(theirs.gate.weight)
        _copy_experts(ours, theirs.experts)
        with torch.no_grad():
            got = ours.to(dtype)(_tokens().to(dtype))
        diff = (got.float() - expected.float()).abs().max().item()
        if dtype is torch.float32:
            assert diff < 1e-5  # gate and up as two matmuls instead of one fused: float32 rounding only
        elif fp32_combine:
            assert diff == 0.0
        else:
            assert diff > 1e-3


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_qwen2_moe_block_with_gated_shared_expert(dtype):
    theirs = _random_(Qwen2MoeSparseMoeBlock(transformers.Qwen2MoeConfig(
        hidden_size=D, moe_intermediate_size=F, shared_expert_intermediate_size=SHARED, num_experts=E,
        num_experts_per_tok=K, norm_topk_prob=False)))
    ours = _ours(normalize_top_k=False, shared_d_ff=SHARED, fp32_combine=False)
    with torch.no_grad():
        ours.router.weight.copy_(theirs.gate.weight)
        ours.shared_gate.weight.copy_(theirs.shared_expert_gate.weight)
        for name in ("gate", "up", "down"):
            getattr(ours.shared, name).weight.copy_(getattr(theirs.shared_expert, f"{name}_proj").weight)
    _copy_experts(ours, theirs.experts)
    expected = theirs.to(dtype)(_tokens().to(dtype))
    with torch.no_grad():
        got = ours.to(dtype)(_tokens().to(dtype))
    diff = (got.float() - expected.float()).abs().max().item()
    assert diff < 1e-5 if dtype is torch.float32 else diff == 0.0


def test_pooled_loss_is_transformers_load_balancing_loss_without_padding():
    """``aux_loss_form: pooled`` over two layers, padding left out, equals transformers' loss on
    the same router logits times the weight (router_aux_loss_coef)."""
    moe = {"name": "moe", "expert": "swiglu", "n_experts": 4, "top_k": 2, "aux_loss_form": "pooled",
           "aux_loss_weight": 0.02}
    torch.manual_seed(0)
    lm = CausalLM(ModelConfig(vocab_size=50, d_model=32, n_layers=2, n_heads=4, d_ff=48, activation=moe,
                              norm="rmsnorm", position="rope", max_seq_len=32))
    logits = []
    for block in lm.model.stack.layers:
        block.ffn.router.register_forward_hook(lambda module, args, out: logits.append(out.detach()))
    ids = torch.randint(1, 50, (3, 9), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    mask[2, 3:] = 0
    lm(ids, mask)
    expected = 0.02 * load_balancing_loss_func(tuple(logits), 4, 2, mask)
    got = pooled_balance_loss(lm.model, mask)
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)
    assert got.requires_grad
    assert pooled_balance_loss(lm.model, mask) is None  # read once: the layers' routing is released
    lm(ids, mask)
    assert aux_loss(lm.model, mask).item() == pytest.approx(expected.item(), rel=1e-6)
    # without the mask, every row counts, as transformers counts them without one
    lm(ids, mask)
    unmasked = 0.02 * load_balancing_loss_func(tuple(logits[:2]), 4, 2, None)
    assert pooled_balance_loss(lm.model).item() == pytest.approx(unmasked.item(), rel=1e-6)
    assert abs(unmasked.item() - expected.item()) > 1e-6
