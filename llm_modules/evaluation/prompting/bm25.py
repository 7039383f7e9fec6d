"""Okapi BM25 over a small corpus (a task's few-shot pool), written out rather than depended on.

``score(q, d) = sum over the query's words w (repeats counted) of
idf(w) * tf(w, d) * (k1 + 1) / (tf(w, d) + k1 * (1 - b + b * |d| / avgdl))`` with
``idf(w) = ln(1 + (N - n(w) + 0.5) / (n(w) + 0.5))`` (the always-positive form Lucene uses), words
being the lower-cased ``\\w+`` runs of the text.
"""

from __future__ import annotations

import math
import re
from collections import Counter

_WORD = re.compile(r"\w+")


def tokenize(text: str) -> list[str]:
    """Lower-cased word split: the tokenisation every BM25 score here uses."""
    return _WORD.findall(text.lower())


class BM25:
    """Scores of one query against every document of ``corpus`` (``scores(query) -> list[float]``)."""

    def __init__(self, corpus: list[str], k1: float = 1.5, b: float = 0.75):
        self.k1, self.b = k1, b
        self.counts = [Counter(tokenize(text)) for text in corpus]
        self.lengths = [sum(c.values()) for c in self.counts]
        self.avgdl = (sum(self.lengths) / len(self.lengths)) if self.lengths else 0.0
        n = len(self.counts)
        frequency = Counter(word for counts in self.counts for word in counts)
        self.idf = {word: math.log(1.0 + (n - m + 0.5) / (m + 0.5)) for word, m in frequency.items()}

    def scores(self, query: str) -> list[float]:
        words = tokenize(query)
        out = []
        for counts, length in zip(self.counts, self.lengths):
            norm = self.k1 * (1.0 - self.b + self.b * length / self.avgdl) if self.avgdl else self.k1
            total = 0.0
            for word in words:
                tf = counts.get(word, 0)
                if tf:
                    total += self.idf[word] * tf * (self.k1 + 1.0) / (tf + norm)
            out.append(total)
        return out
