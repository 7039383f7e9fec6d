"""The activation ``relu2``: a feed-forward block with a squared ReLU."""

import torch
from torch import nn

from llm_modules.registry import ACTIVATIONS


@ACTIVATIONS.register("relu2")
class SquaredReLU(nn.Module):
    """Squared-ReLU MLP (Primer, So et al., 2021): down(relu(up(x)) ** 2)."""

    def __init__(self, d_model: int, d_ff: int | None = None, bias: bool = True, dropout: float = 0.0):
        super().__init__()
        hidden = d_ff or 4 * d_model
        self.up = nn.Linear(d_model, hidden, bias=bias)
        self.down = nn.Linear(hidden, d_model, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.dropout(torch.relu(self.up(x)) ** 2))
