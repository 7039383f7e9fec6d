"""Logits processors: reshape next-token scores before a token is chosen.

Each is a plain function of ``scores`` (N, V) that returns new scores; :class:`LogitsProcessors`
applies the configured ones in Hugging Face's order (repetition penalty, then temperature, top-k,
top-p), so that a sampled sequence matches transformers' for the same seed. Removed tokens get
``-inf``, so ``softmax`` gives them probability 0 and sampling can never pick them.
"""

from __future__ import annotations

import torch

from llm_modules.generation.config import GenerationConfig


def repetition_penalty(scores: torch.Tensor, sequences: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """Make every token already present in a row less likely (CTRL, Keskar et al. 2019).

    A positive score is divided by ``penalty`` and a negative one multiplied, so ``penalty > 1``
    always lowers the token whatever the sign. ``sequences`` (N, T) is each row so far and ``seen``
    (N, T) marks which of its positions count (padding does not).
    """
    # Count presence with scatter_add: a plain boolean scatter of duplicate ids is order-undefined.
    present = torch.zeros_like(scores).scatter_add_(1, sequences, seen.to(scores.dtype)) > 0
    penalised = torch.where(scores < 0, scores * penalty, scores / penalty)
    return torch.where(present, penalised, scores)


def temperature(scores: torch.Tensor, value: float) -> torch.Tensor:
    """Below 1 sharpens the distribution, above 1 flattens it."""
    return scores / value


def top_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the ``k`` highest scores of each row (and any tied with the k-th), remove the rest."""
    kth = torch.topk(scores, min(k, scores.shape[-1]), dim=-1).values[..., -1:]
    return scores.masked_fill(scores < kth, float("-inf"))


def top_p(scores: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filtering (Holtzman et al. 2019): keep the most likely tokens whose probabilities
    together reach ``p``; the single most likely token is always kept.

    Computed from the least likely token upwards, as transformers does, so the boundary case
    (a cumulative sum exactly at the threshold) is decided the same way: a token is removed when
    it and everything less likely together hold at most ``1 - p`` of the probability.
    """
    ascending, order = torch.sort(scores, dim=-1, descending=False)
    tail_mass = ascending.softmax(dim=-1).cumsum(dim=-1)
    remove_sorted = tail_mass <= 1 - p
    remove_sorted[..., -1] = False
    remove = remove_sorted.scatter(-1, order, remove_sorted)
    return scores.masked_fill(remove, float("-inf"))


class LogitsProcessors:
    """The processors a :class:`GenerationConfig` asks for, applied in Hugging Face's order.

    ``sampling=False`` (greedy and beam search) applies the repetition penalty only: the others
    never change which token is most likely, and the config refuses them without ``do_sample``.
    """

    def __init__(self, config: GenerationConfig):
        self.penalty = config.repetition_penalty
        self.temperature = config.temperature if config.do_sample else 1.0
        self.top_k = config.top_k if config.do_sample else None
        self.top_p = config.top_p if config.do_sample else None

    def __call__(self, scores: torch.Tensor, sequences: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
        if self.penalty != 1.0:
            scores = repetition_penalty(scores, sequences, seen, self.penalty)
        if self.temperature != 1.0:
            scores = temperature(scores, self.temperature)
        if self.top_k is not None:
            scores = top_k(scores, self.top_k)
        if self.top_p is not None and self.top_p < 1.0:
            scores = top_p(scores, self.top_p)
        return scores
