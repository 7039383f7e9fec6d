"""fill_mask: what a MaskedLM (BERT) puts in each masked position, with probabilities.

An encoder-only model does not generate left to right; it guesses every masked token at once from
both sides. One forward pass, a softmax at each mask position, its ``top_k`` tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from llm_modules.generation.inference import evaluating
from llm_modules.nn.lm import EncoderLM
from llm_modules.registry import ConfigError


@dataclass
class MaskPredictions:
    """The ``top_k`` guesses for every masked position, positions in row-major order.

    ``row`` (M,) and ``position`` (M,) locate each mask in ``input_ids``; ``token_ids`` (M, k) and
    ``probs`` (M, k) are its guesses, most likely first.
    """

    row: torch.Tensor
    position: torch.Tensor
    token_ids: torch.Tensor
    probs: torch.Tensor

    def __len__(self) -> int:
        return self.row.shape[0]

    def for_row(self, row: int) -> list[tuple[int, list[int], list[float]]]:
        """``(position, token ids, probabilities)`` for each mask of one input row."""
        picked = (self.row == row).nonzero().flatten().tolist()
        return [(int(self.position[i]), self.token_ids[i].tolist(), self.probs[i].tolist()) for i in picked]


def fill_mask(
    module: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    top_k: int = 5,
    mask_token_id: int | None = None,
    token_type_ids: torch.Tensor | None = None,
) -> MaskPredictions:
    """Top-``top_k`` tokens and probabilities at every ``mask_token_id`` in ``input_ids`` (B, T).

    ``module``: a MaskedLM or its torch model. ``mask_token_id`` defaults to the ``<mask>`` piece of
    the model's tokenizer (kept in its checkpoint); without one it must be given.
    """
    model = getattr(module, "model", module)
    if not isinstance(model, EncoderLM):
        raise ConfigError(
            f"fill_mask needs a MaskedLM (encoder-only); got {type(module).__name__}: "
            "use generate for models that continue text"
        )
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ConfigError(f"top_k must be an integer >= 1; got {top_k!r}")
    if mask_token_id is None:
        tokenizer = getattr(module, "tokenizer", None)
        mask_token_id = getattr(tokenizer, "mask_id", None)
        if mask_token_id is None:
            raise ConfigError(
                "mask_token_id is needed: this model carries no tokenizer with a <mask> piece; "
                "pass mask_token_id=<the id your inputs use for masks>"
            )
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids must be a (batch, length) tensor; got shape {tuple(input_ids.shape)}")
    masked = input_ids == mask_token_id
    if not bool(masked.any()):
        raise ConfigError(f"input_ids hold no mask token (id {mask_token_id}); put it where predictions are wanted")
    with evaluating(model):
        logits = model(input_ids, attention_mask, token_type_ids)
    row, position = masked.nonzero(as_tuple=True)
    probs = logits[row, position].float().softmax(dim=-1)
    best = torch.topk(probs, min(top_k, probs.shape[-1]), dim=-1)
    return MaskPredictions(row, position, best.indices, best.values)
