"""Choosing and ordering demonstrations: pure functions over pool indices and similarities.

Nothing here knows lm-eval: ``sampler.py`` turns a task's documents into texts and calls these.
Similarities come from ``BM25Similarity`` or ``EmbeddingSimilarity``, both with ``query(text)``
(the evaluated document against every pool document) and ``between(i, j)`` (two pool documents,
for MMR's redundancy term).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import torch

from llm_modules.evaluation.prompting.bm25 import BM25


class BM25Similarity:
    """BM25 scores scaled to 0..1 by the largest of their row, so that MMR's relevance and redundancy
    (BM25 is unbounded) share one scale. ``between(i, j)``: pool document ``j``'s text as the query
    against ``i``; MMR asks it only for the few chosen ``j``, so a pool of N costs k rows of N
    scores, never N x N."""

    def __init__(self, pool: Sequence[str]):
        self.pool = list(pool)
        self.bm25 = BM25(self.pool)
        self._rows: dict[int, list[float]] = {}

    def query(self, text: str, candidates: Sequence[int]) -> dict[int, float]:
        return _scaled(self.bm25.scores(text), candidates)

    def between(self, i: int, j: int) -> float:
        if j not in self._rows:
            scores = self.bm25.scores(self.pool[j])
            top = max(scores) if scores else 0.0
            self._rows[j] = [s / top if top > 0 else 0.0 for s in scores]
        return self._rows[j][i]


class EmbeddingSimilarity:
    """Cosine similarity of ``embed(texts) -> Tensor (N, D)`` vectors; the pool is embedded once and
    each query text once (cached)."""

    def __init__(self, pool: Sequence[str], embed: Callable[[list[str]], torch.Tensor]):
        self.embed = embed
        self.vectors = _unit(embed(list(pool)))
        self._queries: dict[str, torch.Tensor] = {}

    def query(self, text: str, candidates: Sequence[int]) -> dict[int, float]:
        if text not in self._queries:
            self._queries[text] = _unit(self.embed([text]))[0]
        sims = (self.vectors @ self._queries[text]).tolist()
        return {i: sims[i] for i in candidates}

    def between(self, i: int, j: int) -> float:
        return float(self.vectors[i] @ self.vectors[j])


def _unit(vectors) -> torch.Tensor:
    vectors = torch.as_tensor(vectors, dtype=torch.float64)
    if vectors.dim() != 2:
        raise ValueError(f"embed(texts) must return one vector per text (N, D), got shape {tuple(vectors.shape)}")
    return vectors / vectors.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def _scaled(scores: list[float], candidates: Sequence[int]) -> dict[int, float]:
    top = max((scores[i] for i in candidates), default=0.0)
    return {i: (scores[i] / top if top > 0 else 0.0) for i in candidates}


def nearest(relevance: dict[int, float], n: int) -> list[int]:
    """The ``n`` most similar candidates (ties: the earlier pool document)."""
    return sorted(relevance, key=lambda i: (-relevance[i], i))[:n]


def mmr(relevance: dict[int, float], between: Callable[[int, int], float], n: int, lam: float) -> list[int]:
    """Maximal marginal relevance (Carbonell & Goldstein, 1998): repeatedly take the candidate that
    maximises ``lam * sim(query, d) - (1 - lam) * max over chosen c of sim(d, c)``."""
    chosen: list[int] = []
    left = sorted(relevance)
    while left and len(chosen) < n:
        def gain(i: int) -> float:
            redundancy = max((between(i, c) for c in chosen), default=0.0)
            return lam * relevance[i] - (1.0 - lam) * redundancy
        best = max(left, key=lambda i: (gain(i), -i))
        chosen.append(best)
        left.remove(best)
    return chosen


def drawn(candidates: Sequence[int], n: int, rng: random.Random) -> list[int]:
    """``n`` candidates drawn at random."""
    return rng.sample(list(candidates), n)


def similar_last(chosen: Sequence[int], relevance: dict[int, float]) -> list[int]:
    """Least similar first, most similar last: the closest demonstration sits next to the question."""
    return sorted(chosen, key=lambda i: (relevance[i], -i))


def shuffled(chosen: Sequence[int], rng: random.Random) -> list[int]:
    out = list(chosen)
    rng.shuffle(out)
    return out
