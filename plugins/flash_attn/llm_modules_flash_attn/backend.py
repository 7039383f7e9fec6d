"""The ``flash_attn`` attention backend: FlashAttention-2 through the flash-attn package.

What it computes, and how each part of an ``AttentionMask`` reaches the kernel:

- causal or bidirectional: the kernel's ``causal`` flag (bottom-right aligned, which is where
  queries after a KV cache sit);
- grouped-query attention: native (fewer key/value heads than query heads);
- ``sliding_window`` w: ``window_size=(w - 1, 0)`` causal, ``(w - 1, w - 1)`` bidirectional;
- ALiBi, or any position encoding that declares ``linear_bias_slopes``: the kernel adds
  ``-slope * |i - j|`` from the slopes alone (``score_bias``), so the dense (H, T, T) bias is never built;
- padding and packed documents: ``flash_attn_varlen_func`` over the real tokens of each document
  (``llm_modules.nn.varlen``), so neither costs compute nor leaks between documents.

What it refuses at model build, naming the alternative: a learned additive bias (T5 relative
positions), the prefix-LM mask (PrefixLM), the sparse-stride pattern; and any machine without a
CUDA GPU of compute capability 8.0+ or without the flash-attn package. At run time it refuses
tensors that are not on CUDA or not float16/bfloat16, instead of converting them behind your back.
"""

from __future__ import annotations

import torch

from llm_modules.nn.attention_backends import AttentionBackend, require_cuda
from llm_modules.nn.masks import AttentionMask
from llm_modules.nn.varlen import needs_segments, segments
from llm_modules.registry import ATTENTIONS, ConfigError

INSTALL = "pip install 'llm-modules-flash-attn[kernels]' (or: pip install flash-attn --no-build-isolation)"
MAX_HEAD_DIM = 256


def load_kernels():
    """flash-attn's dense and variable-length functions, imported on first use (not at plugin import)."""
    from flash_attn import flash_attn_func, flash_attn_varlen_func

    return flash_attn_func, flash_attn_varlen_func


def unavailable() -> str | None:
    """Why the kernels cannot run on this machine (completing "attention 'flash_attn' ..."), or None."""
    if not torch.cuda.is_available():
        return "runs only on CUDA GPUs and torch sees none on this machine; use attention 'sdpa' (or 'flex') here"
    major, minor = torch.cuda.get_device_capability()
    if major < 8:
        return (f"needs a GPU of compute capability 8.0 or newer (Ampere+); this one is {major}.{minor}: "
                "use attention 'xformers' or 'sdpa'")
    try:
        load_kernels()
    except (ImportError, OSError) as err:  # OSError: a build that does not match this CUDA/torch
        return (f"needs the flash-attn package, which does not import here ({err}); install it with {INSTALL}, "
                "or use attention 'sdpa'")
    return None


def window_size(mask: AttentionMask) -> tuple[int, int]:
    """flash-attn's (left, right) window for the mask's ``window`` (keys with distance < window)."""
    if mask.window is None:
        return (-1, -1)
    return (mask.window - 1, 0 if mask.causal else mask.window - 1)


@ATTENTIONS.register("flash_attn")
class FlashAttention(AttentionBackend):
    """FlashAttention-2 (CUDA, fp16/bf16): causal or not, GQA, window, ALiBi; padding and documents via varlen."""

    name = "flash_attn"
    #: the kernels (flash_attn_func, flash_attn_varlen_func); tests substitute reference ones
    kernels = staticmethod(load_kernels)

    def __init__(self, head_dim: int | None = None, deterministic: bool = False):
        """``deterministic``: the kernel's deterministic backward (slower, reproducible gradients)."""
        self.head_dim, self.deterministic = head_dim, deterministic

    #: CUDA and the flash-attn package only (``check`` refuses elsewhere, saying why)
    runs_on_cpu = False
    #: flash-attn >= 2.6 caps scores in the kernel (``softcap``); older versions refuse the argument
    supports_softcap = True

    def check(self, *, encoding, position=None, features=frozenset(), **context):
        what = f"position {position!r}" if position else "this position encoding"
        if encoding.adds_score_bias and not encoding.linear_bias_slopes:
            raise ConfigError(
                f"attention 'flash_attn' adds only ALiBi's linear bias (from its slopes), not the learned additive "
                f"bias that {what} needs; use attention 'xformers', 'sdpa' or 'eager' for it, or keep flash_attn "
                "with position 'alibi' or 'rope'"
            )
        refused = {"prefix": "the prefix-LM mask (bidirectional over the prefix, causal after) that PrefixLM needs",
                   "sparse_stride": "the sparse_stride pattern"}
        for feature, text in refused.items():
            if feature in features:
                raise ConfigError(f"attention 'flash_attn' cannot compute {text}; use attention 'flex' or 'sdpa'")
        if self.head_dim is not None and self.head_dim > MAX_HEAD_DIM:
            raise ConfigError(
                f"attention 'flash_attn' supports heads of up to {MAX_HEAD_DIM} dimensions; this model's have "
                f"{self.head_dim}: raise n_heads (or set head_dim) or use attention 'sdpa'"
            )
        super().check(encoding=encoding, position=position, features=features, **context)
        reason = unavailable()
        if reason is not None:
            raise ConfigError(f"attention 'flash_attn' {reason}")

    def score_bias(self, encoding, q_len, k_len, q_offset=0):
        if encoding.linear_bias_slopes:
            return encoding.slopes  # (H,): the kernel adds -slope * |i - j| itself
        return super().score_bias(encoding, q_len, k_len, q_offset)

    def __call__(self, q, k, v, mask, bias, scale, dropout=0.0, softcap=None):
        self.require_tensors(q)
        if mask.prefix_lengths is not None or mask.stride is not None:
            raise RuntimeError("attention 'flash_attn' cannot compute a prefix or sparse-stride mask; use 'sdpa'")
        slopes = None
        if bias is not None:
            if bias.dim() != 1 or bias.shape[0] != q.shape[1]:
                raise RuntimeError(
                    "attention 'flash_attn' takes ALiBi slopes (one per head) as its bias; got shape "
                    f"{tuple(bias.shape)}"
                )
            slopes = bias.to(device=q.device, dtype=torch.float32)
        dense, varlen = self.kernels()
        options = dict(dropout_p=dropout, softmax_scale=scale, causal=mask.causal, window_size=window_size(mask),
                       alibi_slopes=slopes, deterministic=self.deterministic)
        if softcap is not None:  # flash-attn >= 2.6 caps the scores in the kernel (Gemma 2)
            options["softcap"] = softcap
        batch, _, q_len, _ = q.shape
        q, k, v = (x.transpose(1, 2) for x in (q, k, v))  # (B, T, heads, D), flash-attn's layout
        if not needs_segments(mask):
            return dense(q, k, v, **options).transpose(1, 2)
        seg = segments(mask, q.device, aligned=slopes is not None)  # ALiBi: queries at their own positions
        out = varlen(
            q.flatten(0, 1)[seg.q_index], k.flatten(0, 1)[seg.k_index], v.flatten(0, 1)[seg.k_index],
            seg.cu_q, seg.cu_k, seg.max_q, seg.max_k, **options,
        )
        return seg.scatter(out, batch, q_len).transpose(1, 2)

    @staticmethod
    def require_tensors(q: torch.Tensor) -> None:
        """Refuse inputs the kernels cannot take, rather than converting them (which changes the math)."""
        require_cuda("flash_attn", q)
        if q.dtype not in (torch.float16, torch.bfloat16):
            raise RuntimeError(
                f"attention 'flash_attn' computes in float16/bfloat16 and got {q.dtype}; train with "
                "trainer.precision: bf16-mixed (or 16-mixed), or use attention 'sdpa' in float32"
            )
