"""Near-duplicate detection: MinHash signatures over word n-gram shingles, banded into an LSH index.

Why MinHash + LSH: two documents whose shingle sets have Jaccard similarity J agree on each MinHash
value with probability J, so a signature of ``num_perm`` values estimates J, and cutting it into
``bands`` bands of ``rows`` values makes documents with J above roughly ``(1/bands)**(1/rows)`` share
a band (a bucket) with high probability, while dissimilar ones almost never do. Lookups are then
a handful of dictionary probes per document instead of a comparison with every earlier document.

Vectorised: a document's shingles are hashed to 64-bit integers once (``words.ngram_hashes``,
stable across processes), reduced modulo the prime ``P = 2**32 - 5``, and every permutation is
``(a * x + b) mod P`` computed for all shingles and all permutations at once in uint64 arrays. With
``a, b, x < P < 2**32`` the products never overflow 64 bits, so this is the exact universal hash
family rather than an approximation. The coefficients come from BLAKE2b of ``(seed, i)``, so they
are the same on every machine and numpy version.

Keep-first: a document is checked against the index of documents already *kept* and inserted only
if it is kept itself; a bucket hit is confirmed (``verify``) by the signatures' estimated Jaccard.
"""

from __future__ import annotations

import hashlib

import numpy as np

from llm_modules.data.prepare import words as W

P = np.uint64(4294967291)  # the largest prime below 2**32
_trapezoid = getattr(np, "trapezoid", None) or np.trapz  # numpy < 2 calls it trapz
_CHUNK = 256  # shingles per block: keeps the (shingles x num_perm) temporaries in cache


def choose_bands(threshold: float, num_perm: int, fp_weight: float = 0.5, fn_weight: float = 0.5) -> tuple[int, int]:
    """(bands, rows) with bands * rows <= num_perm minimising the weighted areas of false positives
    (pairs below ``threshold`` that collide) and false negatives (pairs above it that do not)."""
    s = np.linspace(0.0, 1.0, 501)
    below, above = s <= threshold, s >= threshold
    best, best_cost = (1, num_perm), float("inf")
    for b in range(1, num_perm + 1):
        for r in range(1, num_perm // b + 1):
            p = 1.0 - (1.0 - s ** r) ** b
            fp = _trapezoid(p[below], s[below]) if below.sum() > 1 else 0.0
            fn = _trapezoid(1.0 - p[above], s[above]) if above.sum() > 1 else 0.0
            cost = fp_weight * fp + fn_weight * fn
            if cost < best_cost - 1e-12:
                best, best_cost = (b, r), cost
    return best


class MinHasher:
    """Signatures (uint32, ``num_perm`` values) of word n-gram shingle sets."""

    def __init__(self, num_perm: int = 128, ngram: int = 5, seed: int = 1):
        self.num_perm, self.ngram = num_perm, ngram
        coeffs = []
        for i in range(num_perm):
            digest = hashlib.blake2b(f"minhash:{seed}:{i}".encode(), digest_size=16).digest()
            a = int.from_bytes(digest[:8], "little") % (int(P) - 1) + 1
            b = int.from_bytes(digest[8:], "little") % int(P)
            coeffs.append((a, b))
        self.a = np.array([c[0] for c in coeffs], dtype=np.uint64)
        self.b = np.array([c[1] for c in coeffs], dtype=np.uint64)

    def shingles(self, word_hashes: np.ndarray) -> np.ndarray:
        """Distinct shingle values (< P); a document shorter than ``ngram`` words is one shingle."""
        n = min(self.ngram, len(word_hashes))
        if n == 0:
            return np.empty(0, dtype=np.uint64)
        return np.unique(W.ngram_hashes(word_hashes, n) % P)

    def signature(self, word_hashes: np.ndarray) -> np.ndarray | None:
        """The MinHash signature of a document's words (their hashes), None for a document without words."""
        x = self.shingles(word_hashes)
        if len(x) == 0:
            return None
        sig = np.full(self.num_perm, int(P), dtype=np.uint64)
        a, b = self.a[None, :], self.b[None, :]
        for start in range(0, len(x), _CHUNK):
            block = x[start:start + _CHUNK, None]
            values = (block * a + b) % P
            np.minimum(sig, values.min(axis=0), out=sig)
        return sig.astype(np.uint32)


class LSHIndex:
    """Band buckets of kept documents' signatures; answers "is this a near duplicate of a kept one?"."""

    def __init__(self, num_perm: int, threshold: float, bands: int | None = None, rows: int | None = None,
                 verify: bool = True):
        if bands is None or rows is None:
            bands, rows = choose_bands(threshold, num_perm)
        self.num_perm, self.threshold, self.bands, self.rows, self.verify = num_perm, threshold, bands, rows, verify
        self.buckets: dict[int, int] = {}  # band key -> first kept row in that bucket
        self.more: dict[int, list[int]] = {}  # band key -> later kept rows (rare: only for verify)
        self._sigs = np.empty((1024, num_perm), dtype=np.uint32)
        self.size = 0
        self._band_ids = (np.arange(bands, dtype=np.uint64) + np.uint64(1)) * np.uint64(0x9E3779B97F4A7C15)

    def band_keys(self, signature: np.ndarray) -> list[int]:
        return self.band_keys_of(signature[None, :])[0].tolist()

    def band_keys_of(self, signatures: np.ndarray) -> np.ndarray:
        """The band keys of many signatures at once, ``(n, bands)``: the same keys as ``band_keys`` row by
        row, computed in a handful of array operations (the select stage hashes every signature)."""
        n = len(signatures)
        bands = signatures[:, : self.bands * self.rows].astype(np.uint64).reshape(n, self.bands, self.rows)
        key = np.broadcast_to(self._band_ids, (n, self.bands)).copy()
        for j in range(self.rows):
            key = W.mix64(key ^ bands[:, :, j])
        return key

    def is_duplicate(self, signature: np.ndarray, keys: list[int] | None = None) -> bool:
        keys = self.band_keys(signature) if keys is None else keys
        buckets = self.buckets
        candidates = {buckets[k] for k in keys if k in buckets}
        if not candidates:
            return False
        if not self.verify:
            return True
        if self.more:
            for k in keys:
                candidates.update(self.more.get(k, ()))
        rows = self._sigs[sorted(candidates)]
        agree = (rows == signature[None, :]).mean(axis=1)
        return bool((agree >= self.threshold).any())

    def add(self, signature: np.ndarray, keys: list[int] | None = None) -> None:
        keys = self.band_keys(signature) if keys is None else keys
        if self.size == len(self._sigs):
            grown = np.empty((2 * len(self._sigs), self.num_perm), dtype=np.uint32)
            grown[: self.size] = self._sigs[: self.size]
            self._sigs = grown
        row = self.size
        self._sigs[row] = signature
        self.size += 1
        buckets = self.buckets
        for k in keys:
            if k not in buckets:
                buckets[k] = row
            elif self.verify:
                self.more.setdefault(k, []).append(row)
