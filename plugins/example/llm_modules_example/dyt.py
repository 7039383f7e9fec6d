"""The norm ``dyt``: Dynamic Tanh, a normalization layer without normalization statistics."""

import torch
from torch import nn

from llm_modules.registry import NORMS


@NORMS.register("dyt")
class DynamicTanh(nn.Module):
    """DyT (Zhu et al., 2025): weight * tanh(alpha * x) + bias, with a learned scalar alpha."""

    def __init__(self, dim: int, alpha: float = 0.5):
        super().__init__()
        self.alpha = nn.Parameter(torch.tensor(float(alpha)))
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * torch.tanh(self.alpha * x) + self.bias
