"""The ``xformers`` attention backend: ``xformers.ops.memory_efficient_attention`` and its biases.

How each ``AttentionMask`` becomes an xformers ``attn_bias`` (``xformers.ops.fmha.attn_bias``):

- nothing to mask: no bias;
- plain causal: ``LowerTriangularMask``; causal after a KV cache: ``LowerTriangularFromBottomRightMask``;
- padding and/or packed documents (causal or not): the real tokens of each document laid end to end
  (``llm_modules.nn.varlen``) under a ``BlockDiagonalMask`` (``make_causal_from_bottomright`` when
  causal), so padding costs nothing and documents cannot see each other;
- anything else (an additive bias such as ALiBi or T5's, sliding windows, prefix-LM, sparse stride):
  one dense additive tensor, the score bias with ``-inf`` where the mask hides a key.

Grouped-query keys and values are expanded to every query head first: xformers' own grouped
(5-D) layout has no backward pass. The backend refuses at model build a machine without CUDA or
without the xformers package, naming what to install or which backend to use.
"""

from __future__ import annotations

import functools

import torch

from llm_modules.nn.attention_backends import AttentionBackend, repeat_kv, require_cuda
from llm_modules.nn.masks import AttentionMask
from llm_modules.nn.varlen import needs_segments, segments
from llm_modules.registry import ATTENTIONS, ConfigError

INSTALL = "pip install 'llm-modules-xformers[kernels]' (an xformers wheel built for your torch and CUDA)"


def load_kernels():
    """``xformers.ops.fmha`` (memory_efficient_attention and attn_bias), imported on first use."""
    from xformers.ops import fmha

    return fmha


def unavailable() -> str | None:
    """Why the kernels cannot run on this machine (completing "attention 'xformers' ..."), or None."""
    if not torch.cuda.is_available():
        return "runs only on CUDA GPUs and torch sees none on this machine; use attention 'sdpa' (or 'flex') here"
    try:
        load_kernels()
    except (ImportError, OSError) as err:
        return (f"needs the xformers package, which does not import here ({err}); install it with {INSTALL}, "
                "or use attention 'sdpa'")
    return None


@ATTENTIONS.register("xformers")
class XFormersAttention(AttentionBackend):
    """xformers memory_efficient_attention (CUDA): causal, block-diagonal (padding, documents) or tensor bias."""

    name = "xformers"
    #: ``xformers.ops.fmha``; tests substitute a reference namespace
    kernels = staticmethod(load_kernels)
    #: CUDA and the xformers package only (``check`` refuses elsewhere, saying why)
    runs_on_cpu = False

    def check(self, **context):
        super().check(**context)
        reason = unavailable()
        if reason is not None:
            raise ConfigError(f"attention 'xformers' {reason}")

    def __call__(self, q, k, v, mask, bias, scale, dropout=0.0):
        self.require_tensors(q)
        fmha = self.kernels()
        attend = functools.partial(fmha.memory_efficient_attention, p=dropout, scale=scale)
        batch, heads, q_len, _ = q.shape
        k, v = repeat_kv(k, heads), repeat_kv(v, heads)
        q, k, v = (x.transpose(1, 2) for x in (q, k, v))  # (B, T, heads, D), xformers' BMHK layout
        structured = bias is None and mask.prefix_lengths is None and mask.stride is None and mask.window is None
        if structured and mask.is_empty:
            return attend(q, k, v).transpose(1, 2)
        if structured and not needs_segments(mask):  # causal, possibly after cached keys
            causal = (fmha.attn_bias.LowerTriangularMask() if q_len == mask.k_len
                      else fmha.attn_bias.LowerTriangularFromBottomRightMask())
            return attend(q, k, v, attn_bias=causal).transpose(1, 2)
        if structured:
            seg = segments(mask, q.device)
            blocks = fmha.attn_bias.BlockDiagonalMask.from_seqlens(seg.q_lens, seg.k_lens)
            if mask.causal:
                blocks = blocks.make_causal_from_bottomright()
            out = attend(
                q.flatten(0, 1)[seg.q_index].unsqueeze(0), k.flatten(0, 1)[seg.k_index].unsqueeze(0),
                v.flatten(0, 1)[seg.k_index].unsqueeze(0), attn_bias=blocks,
            )
            return seg.scatter(out[0], batch, q_len).transpose(1, 2)
        return attend(q, k, v, attn_bias=additive_bias(mask, bias, batch, heads, q.dtype, q.device)).transpose(1, 2)

    @staticmethod
    def require_tensors(q: torch.Tensor) -> None:
        require_cuda("xformers", q)

def additive_bias(
    mask: AttentionMask, bias: torch.Tensor | None, batch: int, heads: int, dtype, device
) -> torch.Tensor:
    """The mask and the score bias as one (B, H, Tq, Tk) tensor: the bias, ``-inf`` where a key is hidden.

    Each row is allocated with room for a multiple of 8 keys and then sliced, because the kernels
    need the bias rows aligned in memory. Filled in place, so a learned bias (T5) still gets its
    gradient through the copy.
    """
    q_len, k_len = mask.q_len, mask.k_len
    storage = torch.zeros(batch, heads, q_len, -(-k_len // 8) * 8, dtype=dtype, device=device)
    out = storage[..., :k_len]
    if bias is not None:
        out.copy_(bias.to(dtype).expand(batch, heads, q_len, k_len))
    if not mask.is_empty:
        out.masked_fill_(~mask.dense(device), float("-inf"))
    return out
