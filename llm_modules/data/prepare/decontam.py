"""Decontamination: drop training documents that share a long word n-gram with evaluation data.

Why n-grams of words (13 by default, as in GPT-3's decontamination): a 13-word run is long enough
that two independent texts almost never share it by chance, and short enough to catch a test
passage pasted into a web page. Both sides are compared in one normal form: the evaluation texts go
through the same normalisation and PII scrubbing as the training text, then both are cut into
lower-cased ``\\w+`` words (case and punctuation ignored) and every window of ``n`` words is hashed
to 64 bits (``words.ngram_hashes``). The evaluation n-grams are kept as one sorted uint64 array, so
a training document is checked with one vectorised ``searchsorted``.

Evaluation documents shorter than ``n`` words contribute nothing (they cannot share an ``n``-gram);
lower ``decontamination.ngram`` for very short evaluation items.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

from llm_modules.data.prepare import words as W


def eval_ngrams(texts: Iterable[str], n: int, prepare_text: Callable[[str], str] | None = None) -> np.ndarray:
    """Sorted distinct uint64 hashes of every word ``n``-gram of ``texts``."""
    parts = []
    for text in texts:
        if prepare_text is not None:
            text = prepare_text(text)
        grams = W.ngram_hashes(W.word_hashes(text)[0], n)
        if len(grams):
            parts.append(grams)
    if not parts:
        return np.empty(0, dtype=np.uint64)
    return np.unique(np.concatenate(parts))


def contaminated(word_hashes: np.ndarray, table: np.ndarray, n: int) -> bool:
    """Whether any ``n``-gram of the document (its word hashes) is in ``table``."""
    if len(table) == 0 or len(word_hashes) < n:
        return False
    grams = W.ngram_hashes(word_hashes, n)
    idx = np.searchsorted(table, grams)
    idx[idx == len(table)] = 0
    return bool((table[idx] == grams).any())
