"""Key/value caches for incremental decoding.

Generating token t+1 needs the keys and values of every earlier token in every layer; recomputing
them makes each step cost a full forward over the sequence. A cache keeps them: each step then
projects only the new token and attends over the stored keys. Keys are stored *after* the
position encoding has rotated them (RoPE), so cached keys never move; encodings that act on the
scores (ALiBi, T5 buckets) or on the embeddings (learned, sinusoidal) only need the new tokens'
positions, which the model derives from how many tokens the cache already holds.

Generation sizes the buffers for the whole run up front (``capacity``: prompt + new tokens), so
they are allocated once and every step writes its token in place; without a capacity they grow
in chunks (doubling), so appending one token is still a copy of that token alone. ``reorder``
selects rows for beam search (keep, drop, duplicate), in place while the row count stays.
"""

from __future__ import annotations

import torch


class CacheEntry:
    """Keys and values of one attention module, (B, Hkv, T, D) each, in a growing buffer."""

    def __init__(self, capacity: int | None = None):
        self._capacity_hint = capacity
        self._k: torch.Tensor | None = None
        self._v: torch.Tensor | None = None
        self.length = 0

    @property
    def is_empty(self) -> bool:
        return self._k is None

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new keys/values after the old ones; return all of them (views, not copies)."""
        new = k.shape[2]
        needed = self.length + new
        if self._k is None or needed > self._k.shape[2]:
            capacity = max(needed, self._capacity_hint or 0, 2 * (self._k.shape[2] if self._k is not None else 0))
            self._k, self._v = self._grown(self._k, k, capacity), self._grown(self._v, v, capacity)
        self._k[:, :, self.length : needed] = k
        self._v[:, :, self.length : needed] = v
        self.length = needed
        return self.keys, self.values

    def store(self, k: torch.Tensor, v: torch.Tensor) -> None:
        """Keep fixed keys/values (cross-attention over the encoder output), computed once."""
        self._k, self._v, self.length = k, v, k.shape[2]
        self._owned = False

    @property
    def keys(self) -> torch.Tensor:
        return self._k[:, :, : self.length]

    @property
    def values(self) -> torch.Tensor:
        return self._v[:, :, : self.length]

    def reorder(self, index: torch.Tensor) -> None:
        """Keep rows ``index``: into the same buffers when their count stays (beam search's steps),
        into new ones when it changes (the first expansion to beams); only the filled positions move."""
        if self._k is None:
            return
        index = index.to(self._k.device)
        if self._owned and index.shape[0] == self._k.shape[0]:
            for buffer in (self._k, self._v):
                filled = buffer[:, :, : self.length]
                filled.copy_(filled.index_select(0, index))
        else:
            self._k, self._v = self._k.index_select(0, index), self._v.index_select(0, index)

    _owned = False  # the buffers are this entry's own (``append``), not tensors handed to ``store``

    def _grown(self, old: torch.Tensor | None, like: torch.Tensor, capacity: int) -> torch.Tensor:
        batch, heads, _, dim = like.shape
        buffer = like.new_empty(batch, heads, capacity, dim)
        self._owned = True
        if old is not None and self.length:
            buffer[:, :, : self.length] = old[:, :, : self.length]
        return buffer


class LayerCache:
    """The cache entries of one block: its self-attention and, in a decoder over an encoder, its
    cross-attention."""

    def __init__(self, capacity: int | None = None):
        self.self_attn = CacheEntry(capacity)
        self.cross_attn = CacheEntry()

    def reorder(self, index: torch.Tensor) -> None:
        self.self_attn.reorder(index)
        self.cross_attn.reorder(index)


class KVCache:
    """Everything one decoding stack needs to continue a batch of sequences.

    ``length`` is how many positions the stack has processed (prompt, left padding included, plus
    generated tokens): the next tokens' query offset. The model advances it after each forward.
    A cache may also be handed to a model already holding positions that no forward computed
    (keys and values learned or computed elsewhere): the model attends to them as to any past.
    ``capacity`` (optional) sizes the buffers for the whole generation up front.
    """

    def __init__(self, capacity: int | None = None):
        self.capacity = capacity
        self.layers: list[LayerCache] = []
        self.length = 0

    def layer(self, index: int) -> LayerCache:
        while len(self.layers) <= index:
            self.layers.append(LayerCache(self.capacity))
        return self.layers[index]

    def reorder(self, index: torch.Tensor) -> None:
        """Keep rows ``index`` in that order (beam search: expand, then follow each beam's origin)."""
        for layer in self.layers:
            layer.reorder(index)
