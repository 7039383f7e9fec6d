"""Normalization layers. Each normalizes over the last (feature) dimension."""

from __future__ import annotations

import torch
from torch import nn

from llm_modules.nn.fast import plain_tensors
from llm_modules.registry import NORMS


@NORMS.register("layernorm")
class LayerNorm(nn.LayerNorm):
    """LayerNorm (Ba et al.): centre and scale each vector; ``bias: false`` drops the shift (PaLM)."""

    def __init__(self, dim: int, eps: float = 1e-5, bias: bool = True):
        super().__init__(dim, eps=eps, bias=bias)

    def reset_gain(self, gain: float) -> None:
        """Start the output at ``gain`` times unit scale (``nn.init``: a layout's ``default_init``)."""
        self.weight.fill_(gain)


@NORMS.register("rmsnorm")
class RMSNorm(nn.Module):
    """RMSNorm (Zhang & Sennrich): scale by the root mean square, no centring (LLaMA, T5)."""

    #: the math ``nn.decode_step`` reproduces for this class itself (a subclass declares its own)
    lean_decode = "rmsnorm"

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32 and self.weight.dtype == torch.float32 and plain_tensors(x, self.weight):
            return _RMSNormFP32.apply(x, self.weight, self.eps)
        # Statistics in fp32 so bf16/fp16 activations do not lose the small-variance tail.
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)

    def reset_gain(self, gain: float) -> None:
        """Start the output at ``gain`` times unit scale (``nn.init``: a layout's ``default_init``)."""
        self.weight.fill_(gain)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


class _RMSNormFP32(torch.autograd.Function):
    """``weight * x * rsqrt(mean(x^2) + eps)`` in fp32 with a hand-written backward: the reference
    formula's autograd graph runs about a dozen full-size passes backward (the pow, mean, rsqrt and
    two products each differentiated on their own); this writes four full-size tensors and reads
    two, and saves the input and the per-token scale only (``fused_rms_norm`` returns that scale).
    The normalized input is never formed: with ``s`` the scale and ``g = grad * weight``,
    ``grad_x = s * (g - x * s^2 * mean(g * x))`` and ``grad_weight = sum over tokens of s * grad * x``,
    both sums from ``grad * x`` by a matrix-vector product. Same math up to float rounding
    (``tests/unit/test_fast_paths.py``)."""

    @staticmethod
    def forward(ctx, x, weight, eps):
        out, scale = fused_rms_norm(x, weight, eps)
        ctx.save_for_backward(x, scale, weight)
        return out

    @staticmethod
    def backward(ctx, grad):
        x, scale, weight = ctx.saved_tensors
        dim = x.shape[-1]
        grad_x = grad_weight = None
        # grad * x serves both: its rows weighted by s sum to grad_weight, and its rows dotted with
        # the weight are sum(g * x) below (two matrix-vector products)
        product = (grad * x).reshape(-1, dim)
        with torch.autocast(x.device.type, enabled=False):  # fp32 products, also in a mixed-precision backward
            if ctx.needs_input_grad[1]:
                grad_weight = torch.mv(product.t(), scale.reshape(-1))
            if ctx.needs_input_grad[0]:
                # d/dx of x * s(x) with s = rsqrt(mean(x^2) + eps), g = grad * weight:
                # s * (g - x s * mean(g * x s)) = s * (g - x * s^2 * mean(g * x))
                coef = torch.mv(product, weight).reshape(scale.shape).mul_(scale).mul_(scale).div_(dim)
                grad_x = (grad * weight).addcmul_(x, coef, value=-1).mul_(scale)
        return grad_x, grad_weight, None


def fused_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(``weight * x * scale``, ``scale``) with ``scale = rsqrt(mean(x^2) + eps)`` per row: torch's
    one-kernel RMSNorm on GPUs (a single pass instead of six kernels). On CPU torch's op is those
    six kernels (a squared copy, its mean, two products); here the sum of squares is one dot
    product per row, which writes nothing full-size, and the two products write one tensor."""
    if HAS_FUSED_RMS_NORM and x.device.type != "cpu":
        return torch.ops.aten._fused_rms_norm(x, [x.shape[-1]], weight, eps)
    with torch.autocast(x.device.type, enabled=False):  # (CPU autocast would run the dot products in bf16)
        scale = torch.linalg.vecdot(x, x).div_(x.shape[-1]).add_(eps).rsqrt_().unsqueeze(-1)
    return torch.mul(x, scale).mul_(weight), scale


HAS_FUSED_RMS_NORM = hasattr(torch.ops.aten, "_fused_rms_norm")


@NORMS.register("gemma_rmsnorm")
class GemmaRMSNorm(nn.Module):
    """RMSNorm whose gain is stored as an offset from one, ``x_normed * (1 + weight)``, computed
    in fp32 and cast back at the end (Gemma 1-3). The same function as ``rmsnorm`` with gain
    1 + weight in fp32, but a checkpoint stores ``weight`` (zeros at init): this norm keeps that
    tensor as it is, so weights round-trip bit for bit."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return (h * (1.0 + self.weight.float())).to(x.dtype)

    def reset_gain(self, gain: float) -> None:
        """Start the output at ``gain`` times unit scale (``nn.init``: a layout's ``default_init``)."""
        self.weight.fill_(gain - 1.0)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


@NORMS.register("scalenorm")
class ScaleNorm(nn.Module):
    """ScaleNorm (Nguyen & Salazar): ``g * x / ||x||`` with one learned scalar g, initialised to sqrt(dim)."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps, self.dim = eps, dim
        self.scale = nn.Parameter(torch.tensor(float(dim) ** 0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        norm = h.norm(dim=-1, keepdim=True).clamp_min(self.eps)
        return (self.scale * (h / norm)).to(x.dtype)

    def reset_gain(self, gain: float) -> None:
        """Start the output at ``gain`` times unit scale (``nn.init``: a layout's ``default_init``)."""
        self.scale.fill_(gain * self.dim**0.5)
