"""The variable-length form of a mask, for kernels that take packed sequences instead of a mask.

flash-attn's ``flash_attn_varlen_func`` and xformers' block-diagonal biases do not read a mask:
they take the real tokens of every sequence concatenated, plus the sequence boundaries
(``cu_seqlens``), and attend only within a sequence. Padding then costs nothing and packed
documents cannot see each other. ``segments`` turns an ``AttentionMask`` into that layout, so
every such backend (plugins included) shares one, CPU-testable, translation.

Two layouts, decided by the mask:

- **aligned** (self-attention: causal, windowed, with documents, or asked for): a sequence is one document
  of one row, padding removed. Query i of a row is key ``i + q_offset``; the queries of a
  sequence are the last keys of it (a KV cache holds the earlier ones), which is the
  bottom-right alignment both kernels use for causal masks and windows.
- **rows** (no structure but key padding: cross-attention, or an encoder without window): a
  sequence is a whole row; every query is kept and only the padding keys are removed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llm_modules.nn.masks import AttentionMask


@dataclass
class Segments:
    """Packed-sequence layout of one batch.

    ``q_index`` / ``k_index`` select the kept queries / keys from the batch flattened to
    (B * T, ...); ``cu_q`` / ``cu_k`` (int32, n + 1) are the cumulative sequence lengths and
    ``q_lens`` / ``k_lens`` the same as Python lists; ``max_q`` / ``max_k`` the longest ones.
    """

    q_index: torch.Tensor
    k_index: torch.Tensor
    cu_q: torch.Tensor
    cu_k: torch.Tensor
    q_lens: list[int]
    k_lens: list[int]
    max_q: int
    max_k: int
    aligned: bool

    def scatter(self, packed: torch.Tensor, batch: int, q_len: int) -> torch.Tensor:
        """Outputs (total_q, ...) back to (batch, q_len, ...); dropped queries (padding) get zeros."""
        out = packed.new_zeros(batch * q_len, *packed.shape[1:])
        return out.index_copy(0, self.q_index, packed).unflatten(0, (batch, q_len))


def needs_segments(mask: AttentionMask) -> bool:
    """Whether the mask has padding or documents, i.e. is more than one dense sequence per row."""
    return mask.key_padding is not None or mask.documents is not None


def segments(mask: AttentionMask, device: torch.device | str | None = None, *, aligned: bool = False) -> Segments:
    """The packed layout of ``mask``; raises ValueError for structure it cannot express.

    ``aligned`` asks for the aligned layout even where the mask alone would not need it: a kernel
    that adds a distance-dependent bias (ALiBi slopes) must see each query at its own position,
    which only the aligned layout gives (the mask is then a self-attention one). A prefix-LM mask
    or a stride pattern has no packed form (it is not one block per sequence), and documents must
    be contiguous runs within a row.
    """
    if mask.prefix_lengths is not None or mask.stride is not None:
        raise ValueError("a prefix or sparse-stride mask has no variable-length form; use a dense-mask backend")
    batch, q_len, k_len = mask.batch_size, mask.q_len, mask.k_len
    if device is None:
        for t in (mask.key_padding, mask.documents):
            if t is not None:
                device = t.device
    real = (mask.key_padding.to(device).bool() if mask.key_padding is not None
            else torch.ones(batch, k_len, dtype=torch.bool, device=device))
    aligned = aligned or mask.causal or mask.window is not None or mask.documents is not None
    if not aligned:  # one sequence per row: all queries, the real keys
        q_index = torch.arange(batch * q_len, device=device)
        k_index = real.flatten().nonzero().flatten()
        q_lens = [q_len] * batch
        k_lens = real.sum(-1).tolist()
        return _build(q_index, k_index, q_lens, k_lens, aligned=False, device=device)
    if q_len + mask.q_offset != k_len:
        raise ValueError(
            f"self-attention mask over {q_len} queries after {mask.q_offset} cached keys must have "
            f"{q_len + mask.q_offset} keys; it has {k_len}"
        )
    if mask.documents is not None:
        docs = mask.documents.to(device)
        if bool((docs[:, 1:] < docs[:, :-1]).any()):
            raise ValueError("document ids must be non-decreasing along each row (documents in contiguous runs)")
        starts = torch.ones_like(real)
        starts[:, 1:] = docs[:, 1:] != docs[:, :-1]
    else:
        starts = torch.zeros_like(real)
        starts[:, 0] = True
    segment = starts.flatten().long().cumsum(0) - 1  # (B * Tk,) the sequence each key belongs to
    n = int(segment[-1]) + 1 if segment.numel() else 0
    query_keys = torch.zeros_like(real)
    query_keys[:, mask.q_offset:] = True
    is_query = (real & query_keys).flatten()
    q_counts = torch.bincount(segment[is_query], minlength=n)
    k_counts = torch.bincount(segment[real.flatten()], minlength=n)
    used = q_counts > 0  # a sequence without queries (all cached, or all padding) is dropped
    keep_key = real.flatten() & used[segment]
    k_index = keep_key.nonzero().flatten()
    key_rows = is_query.view(batch, k_len)[:, mask.q_offset:].flatten()
    q_index = key_rows.nonzero().flatten()
    return _build(q_index, k_index, q_counts[used].tolist(), k_counts[used].tolist(), aligned=True, device=device)


def _build(q_index, k_index, q_lens: list[int], k_lens: list[int], *, aligned: bool, device) -> Segments:
    def cumulative(lengths: list[int]) -> torch.Tensor:
        out = torch.zeros(len(lengths) + 1, dtype=torch.int32, device=device)
        if lengths:
            out[1:] = torch.tensor(lengths, dtype=torch.int32, device=device).cumsum(0)
        return out

    return Segments(
        q_index=q_index, k_index=k_index, cu_q=cumulative(q_lens), cu_k=cumulative(k_lens),
        q_lens=q_lens, k_lens=k_lens, max_q=max(q_lens, default=0), max_k=max(k_lens, default=0), aligned=aligned,
    )
