"""The model's linear layer: fp32 products on a CPU run on oneDNN where that is faster.

torch computes an fp32 ``F.linear`` on an x86 CPU with MKL's sgemm. oneDNN, which torch ships too,
computes the same product 5-20% faster at training sizes on the CPU we measured (AMD EPYC, AVX-512:
``python benchmarks/linear.py``), for the forward product and for the input gradient; the weight
gradient stays with MKL, which is as fast there. These products are about 80% of a CPU training
step, so this is the largest single lever on it (``benchmarks/train_step.py``).

Below ``MIN_MACS`` multiply-adds per product oneDNN's per-call set-up costs more than it saves, and
everything else takes ``F.linear`` as before: half precision and autocast (their kernels differ
anyway), GPUs, tensor subclasses (DTensor shards, quantized or fake weights; ``nn.fast``), a
compiled graph (inductor picks its own kernels), and oneDNN switched off
(``torch.backends.mkldnn.flags(enabled=False)``). The values equal ``F.linear``'s up to float
rounding (``tests/unit/test_linear.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from llm_modules.nn.fast import plain_tensors

#: multiply-adds per product from which oneDNN is faster than MKL: ``benchmarks/linear.py`` puts the
#: cross-over between 2^24 and 2^26 (products in between are a tie within noise)
MIN_MACS = 1 << 26


def _onednn_present() -> bool:
    return (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
            and torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512"))


_ONEDNN = _onednn_present()


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters, state dict and initialization) whose products take
    :func:`linear`, so an fp32 CPU run gets oneDNN's faster kernels."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)``, on oneDNN when :func:`onednn_serves` says it is faster."""
    if not onednn_serves(x, weight, bias):
        return F.linear(x, weight, bias)
    rows = x.reshape(-1, x.shape[-1])
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                    or (bias is not None and bias.requires_grad)):
        out = _OneDNNLinear.apply(rows, weight, bias)
    else:
        out = _product(rows, weight, bias)
    return out.view(*x.shape[:-1], weight.shape[0])


def onednn_serves(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> bool:
    """Whether this product takes oneDNN: fp32 plain CPU tensors, a product of at least
    ``MIN_MACS`` multiply-adds, no autocast, not while compiling, oneDNN present and enabled."""
    # the size first: the cheapest test, and the one that turns away decoding's one-row products
    if not _ONEDNN or weight.dim() != 2 or x.numel() * weight.shape[0] < MIN_MACS:  # rows x in x out
        return False
    if x.device.type != "cpu" or x.dtype != torch.float32 or weight.dtype != torch.float32:
        return False
    if not weight.is_contiguous() or x.dim() < 1 or x.shape[-1] != weight.shape[1]:
        return False
    if bias is not None and (bias.dtype != torch.float32 or bias.dim() != 1):
        return False
    if torch.is_autocast_enabled("cpu") or torch.compiler.is_compiling() or not torch.backends.mkldnn.enabled:
        return False
    return plain_tensors(x, weight, *(() if bias is None else (bias,)))


def _product(rows: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """rows @ weight.T + bias on oneDNN (``weight`` as (out, in), strided or not)."""
    return torch.ops.mkldnn._linear_pointwise(rows, weight, bias, "none", [], "")


class _OneDNNLinear(torch.autograd.Function):
    """The product and its backward: the input gradient on oneDNN as well (grad @ weight is a linear
    with the transposed weight, read in place), the weight gradient with MKL. Keeps what
    ``F.linear``'s autograd keeps: the input only if the weight needs its gradient, the weight
    only if the input does."""

    @staticmethod
    def forward(ctx, rows, weight, bias):
        needs_rows, needs_weight, _ = ctx.needs_input_grad
        ctx.save_for_backward(rows if needs_weight else None, weight if needs_rows else None)
        return _product(rows, weight, bias)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        rows, weight = ctx.saved_tensors
        needs_rows, needs_weight, needs_bias = ctx.needs_input_grad
        grad_rows = _product(grad, weight.t(), None) if needs_rows else None
        grad_weight = grad.t().mm(rows) if needs_weight else None
        grad_bias = grad.sum(0) if needs_bias else None
        return grad_rows, grad_weight, grad_bias
