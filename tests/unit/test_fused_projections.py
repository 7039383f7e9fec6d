"""q/k/v and gate/up as one stacked product while training (``nn.fused_linear``): the same outputs,
gradients and state-dict keys as the separate products, and the separate products wherever
stacking would change what runs (inference, hooks, PEFT/quantized replacements, autocast)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from llm_modules import CausalLM, ModelConfig
from llm_modules.nn import fused_linear
from llm_modules.nn.attention import Attention
from llm_modules.nn.attention_backends import SDPAttention
from llm_modules.nn.feedforward import geglu, glu, swiglu
from llm_modules.nn.masks import AttentionMask
from llm_modules.nn.positions import RoPE


def attention(bias: bool) -> Attention:
    torch.manual_seed(0)
    return Attention(32, 4, 2, 8, bias, SDPAttention())


def run_attention(module: Attention, x: torch.Tensor) -> torch.Tensor:
    positions = torch.arange(x.shape[1]).unsqueeze(0).expand(x.shape[0], -1)
    return module(x, AttentionMask(x.shape[1], x.shape[1], causal=True), position=RoPE(8), positions=positions)


def outputs_and_grads(module: nn.Module, fn, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
    module.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_()
    out = fn(module, x)
    out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(1)))
    assert x.grad is not None
    return out.detach(), {"x": x.grad, **{n: p.grad for n, p in module.named_parameters()}}


def stacking_off(monkeypatch):
    monkeypatch.setattr(fused_linear, "stackable", lambda *args: False)
    for where in ("llm_modules.nn.attention", "llm_modules.nn.feedforward"):
        monkeypatch.setattr(f"{where}.stackable", lambda *args: False)


def backward_names(out: torch.Tensor) -> set[str]:
    names, stack, seen = set(), [out.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.add(node.name())
        stack.extend(next_fn for next_fn, _ in node.next_functions)
    return names


@pytest.mark.parametrize("bias", [False, True])
def test_stacked_qkv_matches_the_separate_projections(bias, monkeypatch):
    module, x = attention(bias), torch.randn(3, 7, 32)
    assert "_StackedLinearBackward" in backward_names(run_attention(module, x.requires_grad_()))
    stacked = outputs_and_grads(module, run_attention, x)
    stacking_off(monkeypatch)
    assert "_StackedLinearBackward" not in backward_names(run_attention(module, x))
    separate = outputs_and_grads(module, run_attention, x)
    torch.testing.assert_close(stacked[0], separate[0], rtol=1e-5, atol=1e-6)
    for name, grad in separate[1].items():
        torch.testing.assert_close(stacked[1][name], grad, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("build, stacks", [(swiglu, True), (geglu, True), (glu, False)], ids=["swiglu", "geglu", "glu"])
def test_stacked_gate_up_matches_the_separate_projections(build, stacks, monkeypatch):
    torch.manual_seed(0)
    ffn, x = build(16, 24, bias=True), torch.randn(2, 5, 16)
    # only activations that keep their input (an output-keeping one would keep the gate's half too)
    assert ("_StackedLinearBackward" in backward_names(ffn(x.requires_grad_()))) == stacks
    stacked = outputs_and_grads(ffn, lambda m, h: m(h), x)
    stacking_off(monkeypatch)
    separate = outputs_and_grads(ffn, lambda m, h: m(h), x)
    torch.testing.assert_close(stacked[0], separate[0], rtol=1e-5, atol=1e-6)
    for name, grad in separate[1].items():
        torch.testing.assert_close(stacked[1][name], grad, rtol=1e-5, atol=1e-6, msg=name)


def test_separate_products_where_stacking_would_change_what_runs():
    module, x = attention(False), torch.randn(2, 5, 32)
    with torch.no_grad():  # inference and decoding: each weight read once, no stacked copy
        assert not fused_linear.stackable(x, module.q, module.k, module.v)
    assert fused_linear.stackable(x, module.q, module.k, module.v)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not fused_linear.stackable(x, module.q, module.k, module.v)
    handle = module.k.register_forward_hook(lambda *args: None)  # a hook must still see its call
    assert not fused_linear.stackable(x, module.q, module.k, module.v)
    handle.remove()

    class Replacement(nn.Linear):  # a PEFT or quantized linear computes more than the product
        pass

    module.v = Replacement(32, 16, bias=False)
    assert not fused_linear.stackable(x, module.q, module.k, module.v)
    assert not fused_linear.stackable(x, nn.Linear(32, 8), nn.Linear(32, 8, bias=False))  # biases: all or none
    assert not fused_linear.stackable(x.double(), nn.Linear(32, 8), nn.Linear(32, 8))  # one dtype


def test_a_model_keeps_its_state_dict_and_trains_alike(monkeypatch):
    cfg = ModelConfig(vocab_size=61, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=48, norm="rmsnorm",
                      activation="swiglu", position="rope", attention="sdpa", bias=False, max_seq_len=16)
    torch.manual_seed(0)
    lm = CausalLM(cfg)
    keys = set(lm.model.state_dict())
    assert {"stack.layers.0.attn.q.weight", "stack.layers.0.ffn.gate.weight", "stack.layers.0.ffn.up.weight"} <= keys
    ids = torch.randint(0, 61, (2, 16), generator=torch.Generator().manual_seed(0))

    def loss_and_grads():
        lm.zero_grad(set_to_none=True)
        loss = lm.compute_loss({"input_ids": ids})["loss"]
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in lm.named_parameters()}

    stacked = loss_and_grads()
    stacking_off(monkeypatch)
    separate = loss_and_grads()
    assert set(lm.model.state_dict()) == keys
    torch.testing.assert_close(stacked[0], separate[0], rtol=1e-5, atol=1e-6)
    for name, grad in separate[1].items():
        torch.testing.assert_close(stacked[1][name], grad, rtol=1e-4, atol=1e-6, msg=name)
