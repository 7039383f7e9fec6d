"""The position encoding ``gate``: a learned gate per position and feature on the token embeddings."""

import torch
from torch import nn

from llm_modules.nn.positions import PositionEncoding
from llm_modules.registry import POSITIONS


@POSITIONS.register("gate")
class PositionGate(PositionEncoding):
    """Learned per-position gates: x * 2 sigmoid(table[position]), about x while the table is near 0.

    Unlike an added position embedding, the product keeps tensors for the backward pass (the
    embeddings and the gates, d_model numbers per token each): the memory estimator measures
    them like any component's (``llm-modules estimate``), nothing declared for that.
    What it declares is where it acts: on the token embeddings (``embeds``).
    """

    embeds = True

    def __init__(self, d_model: int, max_seq_len: int):
        super().__init__()
        self.max_len = max_seq_len
        self.table = nn.Embedding(max_seq_len, d_model)

    def embed(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.table(positions)) * 2.0
