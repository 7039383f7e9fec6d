"""Attention masks described by their structure rather than as dense tensors.

The same description renders as a dense boolean tensor (eager, sdpa) or as a FlexAttention
``mask_mod`` (flex), because both come from one elementwise predicate, ``allows(b, q, k)``.
Kernels that take packed sequences instead of a mask (flash-attn, xformers) read the same
description through ``nn.varlen``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class AttentionMask:
    """Which keys each query may attend to.

    - ``causal``: key k is visible to query q when k <= q (positions counted from ``q_offset`` for q).
    - ``prefix_lengths`` (B,): with ``causal``, keys inside the first prefix_lengths[b] positions are
      visible to every query, so the prefix is bidirectional (PrefixLM).
    - ``key_padding`` (B, Tk) bool, True for real tokens: padding keys are never visible.
    - ``window``: only the last ``window`` positions (|q - k| < window when not causal).
    - ``stride``: the Sparse Transformer "fixed" pattern: keys in the query's own block of
      ``stride`` positions, plus the last position of every block (the summary column).
    - ``positions`` (B, Tk): each key's position among the real tokens of its row (query i sits at
      key index ``i + q_offset``). When given, causal order, prefix length, window and stride blocks
      are measured in these positions rather than in raw indices, so left padding does not move a
      prefix boundary or a stride block; without it, index = position.
    - ``documents`` (B, Tk): the document each key belongs to, in contiguous runs (packed blocks:
      several documents laid end to end in one row). A query sees only keys of its own document,
      so each document is computed as if it were alone in the row (``positions`` then restart at
      each document, see ``nn.documents``).
    """

    q_len: int
    k_len: int
    causal: bool = False
    prefix_lengths: torch.Tensor | None = None
    key_padding: torch.Tensor | None = None
    window: int | None = None
    stride: int | None = None
    q_offset: int = 0
    positions: torch.Tensor | None = None
    documents: torch.Tensor | None = None
    #: ``dense()`` by device: every layer of a stack gets the same mask object, so it is built once per forward
    _dense: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def batch_size(self) -> int:
        for t in (self.prefix_lengths, self.key_padding, self.positions, self.documents):
            if t is not None:
                return t.shape[0]
        return 1

    @property
    def is_plain_causal(self) -> bool:
        """A square causal mask and nothing else: backends may use their fused causal path."""
        return (
            self.causal
            and self.prefix_lengths is None
            and self.key_padding is None
            and self.window is None
            and self.stride is None
            and self.positions is None
            and self.documents is None
            and self.q_offset == 0
            and self.q_len == self.k_len
        )

    @property
    def is_empty(self) -> bool:
        """Nothing is masked: every query sees every key. Also true of a causal mask whose one query
        is the last key (a decoding step without padding: the new token sees everything before it)."""
        unstructured = self.key_padding is None and self.window is None and self.stride is None \
            and self.documents is None
        return unstructured and (not self.causal or (self.q_len == 1 and self.q_offset == self.k_len - 1))

    def allows(self, b: torch.Tensor, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """True where query q of example b may see key k. Works on broadcastable index tensors."""
        q = q + self.q_offset
        ok = torch.ones_like(q == k)
        query_index, key_index = q, k
        if self.positions is not None:
            q, k = self.positions[b, q], self.positions[b, k]
        if self.causal:
            seen = k <= q
            if self.prefix_lengths is not None:
                seen = seen | (k < self.prefix_lengths[b])
            ok = ok & seen
        if self.window is not None:
            distance = (q - k) if self.causal else (q - k).abs()
            ok = ok & (distance < self.window)
        if self.stride is not None:
            same_block = torch.div(q, self.stride, rounding_mode="floor") == torch.div(
                k, self.stride, rounding_mode="floor"
            )
            summary = (k % self.stride) == (self.stride - 1)
            ok = ok & (same_block | summary)
        if self.key_padding is not None:
            ok = ok & self.key_padding[b, key_index]
        if self.documents is not None:
            ok = ok & (self.documents[b, query_index] == self.documents[b, key_index])
        return ok

    def dense(self, device: torch.device | str | None = None) -> torch.Tensor:
        """The mask as a (B or 1, 1, Tq, Tk) bool tensor, True = visible.

        A query row with no visible key (a padding query in a left-padded causal batch) is opened
        to every key instead, so softmax stays finite; such rows are padding and never read.
        """
        if device is None:
            for t in (self.prefix_lengths, self.key_padding, self.positions, self.documents):
                if t is not None:
                    device = t.device
        key = str(device)
        if key not in self._dense:
            self._dense[key] = self._build_dense(device)
        return self._dense[key]

    def _build_dense(self, device) -> torch.Tensor:
        b = torch.arange(self.batch_size, device=device).view(-1, 1, 1, 1)
        q = torch.arange(self.q_len, device=device).view(1, 1, -1, 1)
        k = torch.arange(self.k_len, device=device).view(1, 1, 1, -1)
        mask = self.allows(b, q, k)
        mask = mask.expand(self.batch_size, 1, self.q_len, self.k_len)
        return mask | ~mask.any(dim=-1, keepdim=True)
