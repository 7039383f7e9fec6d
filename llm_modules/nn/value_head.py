"""A scalar head for a decoder: one number per position instead of vocabulary logits.

A reward model (and a PPO critic) is a language model whose LM head is swapped for this one; the
backbone's weights, names and the way strategies shard it stay as they are, and ``model(...)``
then returns (B, T) values. A sequence's score is the value at its last real token, the only
position that has read the whole sequence in a causal decoder (``last_real`` finds it under
right or left padding).
"""

from __future__ import annotations

import torch
from torch import nn


class ValueHead(nn.Module):
    """``hidden (B, T, D) -> (B, T)``: a linear map to one number, started small (std
    ``d_model ** -0.5``: unit-scale hidden states give values of order one) with zero bias."""

    def __init__(self, d_model: int, *, device=None, dtype=None):
        super().__init__()
        self.proj = nn.Linear(d_model, 1, device=device, dtype=dtype)
        nn.init.normal_(self.proj.weight, std=d_model**-0.5)
        nn.init.zeros_(self.proj.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.proj(h.to(self.proj.weight.dtype)).squeeze(-1)


def last_real(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B,) index of each row's last real token (1 in ``attention_mask``), wherever the padding is."""
    mask = attention_mask.long()
    return mask.shape[1] - 1 - mask.flip(1).argmax(1)


def read_last(values: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """(B,) the value at each row's last real token (the last column without a mask)."""
    if attention_mask is None:
        return values[:, -1]
    return values.gather(1, last_real(attention_mask).unsqueeze(1)).squeeze(1)
