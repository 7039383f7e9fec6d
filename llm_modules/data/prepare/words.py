"""Words and stable 64-bit word and n-gram hashes: the shared vocabulary of the repetition filters,
MinHash and decontamination.

Why one module: three stages compare documents by word n-grams, and they must agree on what a word
is and hash it the same way in every process and on every run. Python's ``hash()`` is salted per
process, so it would break resume and ``--workers``; here every hash is plain uint64 arithmetic
(numpy wraps on overflow, which is what a hash wants), the same on every machine.

A *word* is a run of Unicode word characters (``\\w+``) of the lower-cased text: case and punctuation
do not make two passages different, which is the normalisation decontamination asks for.

Speed: a document is turned into one byte string of its words separated by spaces (for ASCII text a
single ``bytes.translate``, no regex), and every word is hashed at once from prefix sums: with
``H[i] = sum(c[j] * B**j for j < i)`` (mod 2**64, ``B`` odd) the word ``c[s:e]`` hashes to
``(H[e] - H[s]) * B**-s``, its polynomial hash, then mixed with its length by SplitMix64's finaliser.
No Python loop runs per word. N-grams are combined from word hashes the same way (``ngram_hashes``).
"""

from __future__ import annotations

import re

import numpy as np

_WORD = re.compile(r"\w+")
# ASCII fast path: bytes.translate maps every byte that is not [a-z0-9_] to a space; for ASCII text
# the words left are exactly ``\w+`` of the lower-cased text.
_ASCII_WORD = bytes(c if chr(c) in "abcdefghijklmnopqrstuvwxyz0123456789_" else 32 for c in range(256))
_SPACE = 32
_SEGMENT = 1 << 20  # bytes hashed per block (bounds the power tables)

_B = 0x100000001B3  # odd, so it is invertible modulo 2**64
_MULT = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31 = np.uint64(30), np.uint64(27), np.uint64(31)
_POW: np.ndarray = np.ones(1, dtype=np.uint64)
_IPOW: np.ndarray = np.ones(1, dtype=np.uint64)


def _powers(n: int) -> tuple[np.ndarray, np.ndarray]:
    """``B**i`` and ``B**-i`` (mod 2**64) for i < n, cached and grown on demand."""
    global _POW, _IPOW
    if len(_POW) < n:
        size = max(n, 2 * len(_POW), 4096)
        steps = np.full(size, _B, dtype=np.uint64)
        steps[0] = 1
        _POW = np.cumprod(steps, dtype=np.uint64)
        steps[1:] = pow(_B, -1, 1 << 64)
        _IPOW = np.cumprod(steps, dtype=np.uint64)
    return _POW, _IPOW


def mix64(values: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser, element-wise: spreads every input bit over the whole output."""
    z = values.astype(np.uint64, copy=True)
    z ^= z >> _S30
    z *= _M1
    z ^= z >> _S27
    z *= _M2
    z ^= z >> _S31
    return z


def words(text: str) -> list[str]:
    """Lower-cased ``\\w+`` tokens of ``text`` (what the hashes below are hashes of)."""
    lower = text.lower()
    if lower.isascii():
        return lower.encode("ascii").translate(_ASCII_WORD).decode("ascii").split()
    return _WORD.findall(lower)


def word_hashes(text: str, lower: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(uint64 hash, length in characters) of every word of ``text``, in order.

    ``lower``: ``text.lower()`` when the caller already has it.
    """
    lower = text.lower() if lower is None else lower
    if lower.isascii():
        data = lower.encode("ascii").translate(_ASCII_WORD)
        lengths = None
    else:
        tokens = _WORD.findall(lower)
        data = " ".join(tokens).encode("utf-8")
        lengths = np.fromiter(map(len, tokens), dtype=np.int64, count=len(tokens))
    hashes, byte_lengths = _hash_words(data)
    return hashes, (byte_lengths if lengths is None else lengths)


def _hash_words(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Hashes and byte lengths of the space-separated words of ``data``, block by block."""
    if len(data) <= _SEGMENT:
        return _hash_block(data)
    parts, pos = [], 0
    while pos < len(data):
        end = data.find(b" ", pos + _SEGMENT)
        end = len(data) if end == -1 else end
        parts.append(_hash_block(data[pos:end]))
        pos = end
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _hash_block(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    buf = np.frombuffer(data, dtype=np.uint8)
    n = len(buf)
    if n == 0:
        return np.empty(0, dtype=np.uint64), np.empty(0, dtype=np.int64)
    inside = (buf != _SPACE).view(np.int8)
    edges = np.diff(inside, prepend=np.int8(0), append=np.int8(0))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    pw, ipw = _powers(n + 1)
    prefix = np.empty(n + 1, dtype=np.uint64)
    prefix[0] = 0
    np.cumsum(buf.astype(np.uint64) * pw[:n], out=prefix[1:])
    lengths = ends - starts
    h = (prefix[ends] - prefix[starts]) * ipw[starts]
    h ^= lengths.astype(np.uint64) * _MULT
    return mix64(h), lengths


def ngram_hashes(hashes: np.ndarray, n: int) -> np.ndarray:
    """One uint64 hash per window of ``n`` consecutive word hashes (empty when there are fewer words).

    Order-sensitive: ``a b`` and ``b a`` hash differently.
    """
    count = len(hashes) - n + 1
    if count <= 0 or n <= 0:
        return np.empty(0, dtype=np.uint64)
    g = hashes[:count].copy()
    for k in range(1, n):
        g *= _MULT
        g ^= hashes[k:k + count]
    g ^= np.uint64(n)
    return mix64(g)
