"""Attention backends: the kernel that turns (q, k, v, mask, bias) into outputs.

Every backend computes ``softmax(scale * q k^T + bias, masked) v``; they differ in speed and in
what they can express. Each declares what it supports, and ``check`` refuses a combination it
cannot serve at model build time, naming an alternative, instead of silently changing the math.
"""

from __future__ import annotations

import abc
import math
import warnings

import torch
import torch.nn.functional as F

from llm_modules.nn import blocked_attention
from llm_modules.nn.masks import AttentionMask
from llm_modules.registry import ATTENTIONS, ConfigError


class AttentionBackend(abc.ABC):
    """Base class. Shapes: q (B, H, Tq, D); k, v (B, Hkv, Tk, D) with H a multiple of Hkv."""

    #: what the CPU contract tests may run: False for backends that need a GPU or a package
    #: (their refusal at build says why); ``cpu_backward`` False: forward only on CPU
    runs_on_cpu = True
    cpu_backward = True
    name = "backend"
    supports_bias = True  # additive score bias (ALiBi, T5 relative positions)
    supports_dropout = True  # dropout on attention probabilities
    supports_masks = True  # arbitrary structured masks (padding, prefix, window, stride)
    #: soft-capped scores ``cap * tanh(scores / cap)`` (Gemma 2): such a backend's ``__call__`` takes
    #: ``softcap=`` (given only when the model asks for it)
    supports_softcap = False

    def check(
        self,
        *,
        encoding: object,
        dropout: float,
        needs_masks: bool = True,
        position: str | None = None,
        masks: str | None = None,
        features: frozenset[str] = frozenset(),
    ) -> None:
        """Raise ConfigError if this backend cannot compute what the model asks for.

        ``encoding`` is the stack's position encoding: what it needs is read from its declared
        capabilities (``adds_score_bias``, ``linear_bias_slopes``, ``rotates_qk``; see
        ``llm_modules.nn.positions.PositionEncoding``), never by calling it. ``position`` and
        ``masks`` name what asks for a bias / a structured mask, so the message names the whole
        combination (e.g. attention 'x' + position 't5'). ``features`` is the stack's mask structure
        as short keys (``bidirectional``, ``prefix``, ``cross``, ``sliding_window``,
        ``sparse_stride``, ``softcap``), for backends that serve some structures or biases and not others (a
        plugin overrides this method, calls it via ``super()`` and adds its own refusals).
        """
        if encoding.adds_score_bias and not self.supports_bias:
            what = f"position {position!r}" if position else "this position encoding"
            raise ConfigError(
                f"attention {self.name!r} cannot add the additive attention bias that {what} needs; "
                "use attention 'sdpa' or 'eager', or a position encoding without bias (rope, learned)"
            )
        if dropout and not self.supports_dropout:
            raise ConfigError(
                f"attention {self.name!r} has no attention dropout; set attention_dropout: 0.0 or use 'sdpa'"
            )
        if "softcap" in features and not self.supports_softcap:
            raise ConfigError(
                f"attention {self.name!r} cannot soft-cap attention scores (attention_softcap); use attention "
                "'eager' or 'flex'"
            )
        if needs_masks and not self.supports_masks:
            what = f" ({masks})" if masks else ""
            raise ConfigError(
                f"attention {self.name!r} supports only plain causal masks, and this model needs more{what}; "
                "use attention 'sdpa' or 'eager'"
            )

    def score_bias(self, encoding, q_len: int, k_len: int, q_offset: int = 0):
        """What this backend receives as ``bias``: by default the dense additive bias (B or 1, H, Tq, Tk)
        of an encoding that declares ``adds_score_bias``, else None. A backend with a fused form of
        some bias (flash-attn's ALiBi slopes, for ``linear_bias_slopes``) returns that instead, so the
        dense tensor is never built."""
        return encoding.bias(q_len, k_len, q_offset) if encoding.adds_score_bias else None

    @abc.abstractmethod
    def __call__(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        mask: AttentionMask,
        bias: torch.Tensor | None,
        scale: float,
        dropout: float = 0.0,
    ) -> torch.Tensor:
        """Attention outputs (B, H, Tq, D)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def repeat_kv(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Expand (B, Hkv, T, D) keys/values to (B, H, T, D) for grouped-query attention."""
    groups = n_heads // x.shape[1]
    return x if groups == 1 else x.repeat_interleave(groups, dim=1)


@ATTENTIONS.register("eager")
class EagerAttention(AttentionBackend):
    """Reference attention in plain torch ops: any mask, any bias; the slowest and the easiest to read."""

    name = "eager"
    supports_softcap = True

    def __call__(self, q, k, v, mask, bias, scale, dropout=0.0, softcap=None):
        k, v = repeat_kv(k, q.shape[1]), repeat_kv(v, q.shape[1])
        scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale
        if softcap is not None:
            scores = torch.tanh(scores / softcap) * softcap
        if bias is not None:
            scores = scores + bias
        if not mask.is_empty:
            scores = scores.masked_fill(~mask.dense(q.device), torch.finfo(scores.dtype).min)
        probs = scores.softmax(dim=-1).to(q.dtype)
        probs = F.dropout(probs, p=dropout) if dropout else probs
        return torch.matmul(probs, v)


@ATTENTIONS.register("sdpa")
class SDPAttention(AttentionBackend):
    """torch ``scaled_dot_product_attention``: fused kernels; a bias travels as a float mask. Plain
    causal self-attention in fp32 on a CPU takes ``nn.blocked_attention``, which is faster there."""

    #: the math ``nn.decode_step`` reproduces for this class itself (a subclass declares its own)
    lean_decode = "sdpa"

    name = "sdpa"

    def __call__(self, q, k, v, mask, bias, scale, dropout=0.0):
        gqa = q.shape[1] != k.shape[1]
        if bias is None and not dropout and mask.is_plain_causal and blocked_attention.serves(q, k, v):
            return blocked_attention.causal_attention(q, k, v, scale)
        if bias is None and (mask.is_plain_causal or mask.is_empty):
            return F.scaled_dot_product_attention(
                q, k, v, is_causal=mask.is_plain_causal, dropout_p=dropout, scale=scale, enable_gqa=gqa
            )
        attn_mask = None if mask.is_empty else mask.dense(q.device)
        if bias is not None:
            bias = bias.to(q.dtype)
            attn_mask = bias if attn_mask is None else bias.masked_fill(~attn_mask, torch.finfo(q.dtype).min)
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=dropout, scale=scale, enable_gqa=gqa
        )


@ATTENTIONS.register("flex")
class FlexAttention(AttentionBackend):
    """FlexAttention: the mask becomes a block mask (skipping fully masked blocks), the bias a score_mod.

    On CPU torch has no FlexAttention backward, so training with it needs a GPU.
    """

    name = "flex"
    supports_dropout = False
    supports_softcap = True
    cpu_backward = False

    def __call__(self, q, k, v, mask, bias, scale, dropout=0.0, softcap=None):
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        if q.device.type == "cpu" and torch.is_grad_enabled() and q.requires_grad:
            raise RuntimeError(
                "attention 'flex' has no backward on CPU in this torch; train with 'sdpa' on CPU "
                "or run on a GPU"
            )
        block_mask = None
        if not mask.is_empty:

            def mask_mod(b, h, q_idx, kv_idx):
                return mask.allows(b, q_idx, kv_idx)

            batch = mask.batch_size if mask.batch_size > 1 else None
            block_mask = create_block_mask(mask_mod, batch, None, q.shape[2], k.shape[2], device=q.device)
        score_mod = None
        if bias is not None or softcap is not None:
            per_example = bias is not None and bias.shape[0] > 1

            def score_mod(score, b, h, q_idx, kv_idx):
                if softcap is not None:
                    score = torch.tanh(score / softcap) * softcap
                if bias is not None:
                    score = score + bias[b if per_example else 0, h, q_idx, kv_idx]
                return score

        with warnings.catch_warnings():
            # Outside torch.compile, flex runs its unfused reference path and says so on every call.
            warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile.*")
            out = flex_attention(
                q, k, v, score_mod=score_mod, block_mask=block_mask, scale=scale,
                enable_gqa=q.shape[1] != k.shape[1],
            )
        # Rows with no visible key (padding queries) come back as zeros here, where the dense
        # backends attend everywhere; either way those rows are padding that nothing reads.
        return out


def require_cuda(backend: str, q: torch.Tensor) -> None:
    """Refuse non-CUDA tensors in a CUDA-only backend (the kernel plugins), saying what to do instead.

    Model build already refuses such a backend on a machine without a GPU; this catches a model
    built on a GPU machine and then run on CPU tensors, which the kernels would reject obscurely.
    """
    if q.device.type != "cuda":
        raise RuntimeError(
            f"attention {backend!r} runs on CUDA tensors and got {q.device.type} ones; move the model to the "
            "GPU (trainer.accelerator: gpu) or build it with attention 'sdpa'"
        )


def default_scale(head_dim: int) -> float:
    return 1.0 / math.sqrt(head_dim)
