"""The norm ``dyt``: Dynamic Tanh, a normalization layer without normalization statistics."""

import torch
from torch import nn

from llm_modules.registry import NORMS


@NORMS.register("dyt")
class DynamicTanh(nn.Module):
    """DyT (Zhu et al., 2025): weight * tanh(alpha * x) + bias, with a learned scalar alpha.

    ``alpha``: the starting alpha for inputs of unit scale; in a model it starts at ``alpha / init_std``
    (``default_init``), the scale of the residual stream there."""

    def __init__(self, dim: int, alpha: float = 0.5):
        super().__init__()
        self.alpha_init = float(alpha)  # for unit-scale inputs; see default_init
        self.alpha = nn.Parameter(torch.tensor(float(alpha)))
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * torch.tanh(self.alpha * x) + self.bias

    def reset_gain(self, gain: float) -> None:
        """Start the output at ``gain`` times unit scale (a layout's ``default_init``, e.g. sandwich)."""
        self.weight.fill_(gain)

    def default_init(self, init) -> None:
        """``alpha`` is for inputs of unit scale; a model's residual stream starts at the embeddings'
        scale ``init.std`` (0.02), where tanh is linear and DyT would pass on 1/100 of a norm's
        output: the final norm's output, and so the logits, would start near zero and the model
        learn only token frequencies. Dividing by ``init.std`` maps the stream to unit scale, as a
        norm does (DyT's alpha stands for 1 / the input's std; Zhu et al., 2025)."""
        self.alpha.fill_(self.alpha_init / init.std)
