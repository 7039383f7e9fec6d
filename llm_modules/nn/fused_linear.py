"""Several projections of the same input as one matrix product, while training.

Attention's q, k and v, and a gated feed-forward's gate and up, each read the same normalized
hidden state. Run apart, a step makes three (two) products forward, three input-gradient
products whose results autograd then adds up, and three weight-gradient products; against the
weights stacked by rows it makes one of each. The arithmetic is the same; fewer, larger products
keep the threads busier and the additions go (``cpu-llama``'s projections, forward and both
gradients, on the shared 2-core machine: 1-2% less time on one thread, ~10% on two, where every
product ends in a thread barrier).

The modules keep their own ``nn.Linear`` children, so state dicts, HF interop, PEFT targets,
quantization and tensor-parallel plans see ``q``/``k``/``v`` as before. Only plain linears are
stacked (not a PEFT or quantized replacement, whose forward does more than the product), without
hooks (which would not see the call), outside autocast, and only while gradients are recorded:
inference keeps the separate products, which read each weight once (the stacked weight is a
per-call copy). The stacked weight is not kept for the backward (``_StackedLinear`` keeps the
input and the weights themselves, as ``F.linear`` does, and stacks them again there).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from llm_modules.nn.fast import plain_tensors


def stackable(x: torch.Tensor, *linears: nn.Module) -> bool:
    """Whether ``stacked_linear(x, linears)`` serves these modules (see the module docstring)."""
    if not torch.is_grad_enabled() or torch.is_autocast_enabled(x.device.type):
        return False
    if not all(type(m) is nn.Linear and not (m._forward_hooks or m._forward_pre_hooks) for m in linears):
        return False
    weights = [m.weight for m in linears]
    biases = [m.bias for m in linears if m.bias is not None]
    if biases and len(biases) != len(linears):
        return False
    tensors = [x, *weights, *biases]
    return plain_tensors(*tensors) and all(t.dtype == x.dtype and t.device == x.device for t in tensors)


def stacked_linear(x: torch.Tensor, linears: tuple[nn.Linear, ...]) -> torch.Tensor:
    """``cat([m(x) for m in linears], -1)`` as one product (``stackable`` must hold)."""
    biases = [m.bias for m in linears if m.bias is not None]
    return _StackedLinear.apply(x, len(linears), *(m.weight for m in linears), *biases)


class _StackedLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, n, *params):
        weights, biases = params[:n], params[n:]
        ctx.save_for_backward(x, *weights)
        ctx.n, ctx.has_bias = n, bool(biases)
        return F.linear(x, torch.cat(weights), torch.cat(biases) if biases else None)

    @staticmethod
    def backward(ctx, grad):
        x, *weights = ctx.saved_tensors
        n, needs = ctx.n, ctx.needs_input_grad
        sizes = [w.shape[0] for w in weights]
        grad_x = grad @ torch.cat(weights) if needs[0] else None
        flat = grad.reshape(-1, grad.shape[-1])
        grad_weights: list = [None] * n
        if any(needs[2:2 + n]):
            stacked = flat.t() @ x.reshape(-1, x.shape[-1])
            grad_weights = [g if need else None for g, need in zip(stacked.split(sizes), needs[2:2 + n])]
        grad_biases: list = []
        if ctx.has_bias:
            grad_biases = [g if need else None for g, need in zip(flat.sum(0).split(sizes), needs[2 + n:])]
        return (grad_x, None, *grad_weights, *grad_biases)
