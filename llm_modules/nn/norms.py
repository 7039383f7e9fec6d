"""Normalization layers. Each normalizes over the last (feature) dimension."""

from __future__ import annotations

import torch
from torch import nn

from llm_modules.registry import NORMS


@NORMS.register("layernorm")
class LayerNorm(nn.LayerNorm):
    """LayerNorm (Ba et al.): centre and scale each vector; ``bias: false`` drops the shift (PaLM)."""

    def __init__(self, dim: int, eps: float = 1e-5, bias: bool = True):
        super().__init__(dim, eps=eps, bias=bias)


@NORMS.register("rmsnorm")
class RMSNorm(nn.Module):
    """RMSNorm (Zhang & Sennrich): scale by the root mean square, no centring (LLaMA, T5)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Statistics in fp32 so bf16/fp16 activations do not lose the small-variance tail.
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


@NORMS.register("scalenorm")
class ScaleNorm(nn.Module):
    """ScaleNorm (Nguyen & Salazar): ``g * x / ||x||`` with one learned scalar g, initialised to sqrt(dim)."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.scale = nn.Parameter(torch.tensor(float(dim) ** 0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        norm = h.norm(dim=-1, keepdim=True).clamp_min(self.eps)
        return (self.scale * (h / norm)).to(x.dtype)
