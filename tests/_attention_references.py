"""Reference stand-ins for the flash-attn and xformers kernels, written from their documented semantics.

They let the CPU tests run the plugins' own code (mask translation, unpadding, packing documents,
scattering results back) against the eager backend, with only the CUDA kernel replaced:

- flash-attn: causal masks and windows are aligned to the bottom-right corner (query i of a
  sequence with Tq queries and Tk keys sits at key position i + Tk - Tq), ALiBi adds
  ``-slope * |i + Tk - Tq - j|``, GQA shares key head h // (H / Hkv), and a row with no visible
  key returns zeros; the varlen function does the same per ``cu_seqlens`` segment.
- xformers: BMHK tensors with as many key heads as query heads; ``LowerTriangularMask`` is
  top-left aligned, ``LowerTriangularFromBottomRightMask`` and ``BlockDiagonalMask``'s
  ``make_causal_from_bottomright`` bottom-right; a tensor bias is added to the scores and must
  have its rows aligned to 8 elements.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch


def _attend(scores: torch.Tensor, keep: torch.Tensor, v: torch.Tensor, pattern: str) -> torch.Tensor:
    probs = scores.masked_fill(~keep, float("-inf")).softmax(-1).nan_to_num(0.0)
    return torch.einsum(pattern, probs, v)


# ---- flash-attn --------------------------------------------------------------------------------------------


def _flash_one(q, k, v, *, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1),
               alibi_slopes=None, deterministic=False, softcap=0.0):
    """One sequence: q (Tq, H, D), k/v (Tk, Hkv, D) -> (Tq, H, D). ``softcap`` > 0 caps the scaled
    scores, ``softcap * tanh(s / softcap)``, before ALiBi and the mask (flash-attn >= 2.6)."""
    assert dropout_p == 0.0
    tq, tk, heads = q.shape[0], k.shape[0], q.shape[1]
    k, v = (x.repeat_interleave(heads // x.shape[1], dim=1) for x in (k, v))
    scale = softmax_scale if softmax_scale is not None else q.shape[-1] ** -0.5
    scores = torch.einsum("qhd,khd->hqk", q.float(), k.float()) * scale
    if softcap > 0:
        scores = torch.tanh(scores / softcap) * softcap
    i = torch.arange(tq).view(-1, 1) + tk - tq
    j = torch.arange(tk).view(1, -1)
    if alibi_slopes is not None:
        assert alibi_slopes.dtype == torch.float32 and alibi_slopes.shape == (heads,)
        scores = scores - alibi_slopes.view(-1, 1, 1) * (i - j).abs()
    keep = torch.ones(tq, tk, dtype=torch.bool)
    left, right = window_size
    if causal:
        keep &= j <= i
    if left >= 0:
        keep &= j >= i - left
    if right >= 0 and not causal:
        keep &= j <= i + right
    return _attend(scores, keep, v.float(), "hqk,khd->qhd").to(q.dtype)


def flash_attn_func(q, k, v, **options):
    assert q.dim() == 4 and q.shape[2] % k.shape[2] == 0
    return torch.stack([_flash_one(q[b], k[b], v[b], **options) for b in range(q.shape[0])])


def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, **options):
    assert cu_seqlens_q.dtype == torch.int32 and cu_seqlens_k.dtype == torch.int32
    cq, ck = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    assert cq[-1] == q.shape[0] and ck[-1] == k.shape[0]
    assert max_seqlen_q == max(b - a for a, b in zip(cq, cq[1:]))
    assert max_seqlen_k == max(b - a for a, b in zip(ck, ck[1:]))
    parts = [_flash_one(q[a:b], k[c:d], v[c:d], **options) for a, b, c, d in zip(cq, cq[1:], ck, ck[1:])]
    return torch.cat(parts)


def flash_kernels():
    return flash_attn_func, flash_attn_varlen_func


# ---- xformers ----------------------------------------------------------------------------------------------


class LowerTriangularMask:
    def keep(self, tq, tk):
        return torch.arange(tk).view(1, -1) <= torch.arange(tq).view(-1, 1)


class LowerTriangularFromBottomRightMask:
    def keep(self, tq, tk):
        return torch.arange(tk).view(1, -1) <= torch.arange(tq).view(-1, 1) + tk - tq


class BlockDiagonalMask:
    def __init__(self, q_lens, k_lens, causal=False):
        self.q_lens, self.k_lens, self.causal = list(q_lens), list(k_lens), causal

    @classmethod
    def from_seqlens(cls, q_seqlen, kv_seqlen=None):
        assert all(isinstance(n, int) for n in q_seqlen)
        return cls(q_seqlen, q_seqlen if kv_seqlen is None else kv_seqlen)

    def make_causal_from_bottomright(self):
        assert all(k >= q for q, k in zip(self.q_lens, self.k_lens))
        return BlockDiagonalMask(self.q_lens, self.k_lens, causal=True)

    def keep(self, tq, tk):
        assert (tq, tk) == (sum(self.q_lens), sum(self.k_lens))
        out = torch.zeros(tq, tk, dtype=torch.bool)
        qa = ka = 0
        for nq, nk in zip(self.q_lens, self.k_lens):
            block = LowerTriangularFromBottomRightMask().keep(nq, nk) if self.causal else torch.ones(nq, nk).bool()
            out[qa:qa + nq, ka:ka + nk] = block
            qa, ka = qa + nq, ka + nk
        return out


def memory_efficient_attention(query, key, value, attn_bias=None, p=0.0, scale=None):
    assert query.dim() == 4 and key.shape[2] == query.shape[2], "BMHK with as many key heads as query heads"
    assert p == 0.0
    tq, tk = query.shape[1], key.shape[1]
    scale = scale if scale is not None else query.shape[-1] ** -0.5
    scores = torch.einsum("bqhd,bkhd->bhqk", query.float(), key.float()) * scale
    keep = torch.ones(tq, tk, dtype=torch.bool)
    if isinstance(attn_bias, torch.Tensor):
        assert attn_bias.stride(-2) % 8 == 0, "xformers needs bias rows aligned to 8 elements"
        assert attn_bias.dtype == query.dtype
        scores = scores + attn_bias.float()
    elif attn_bias is not None:
        keep = attn_bias.keep(tq, tk)
    return _attend(scores, keep, value.float(), "bhqk,bkhd->bqhd").to(query.dtype)


def xformers_fmha():
    return SimpleNamespace(
        memory_efficient_attention=memory_efficient_attention,
        attn_bias=SimpleNamespace(
            LowerTriangularMask=LowerTriangularMask,
            LowerTriangularFromBottomRightMask=LowerTriangularFromBottomRightMask,
            BlockDiagonalMask=BlockDiagonalMask,
        ),
    )
