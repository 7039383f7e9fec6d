"""Blocks and stacks: attention (+ cross-attention) + feed-forward, wired by a residual layout."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from llm_modules.nn.attention import Attention
from llm_modules.nn.attention_backends import AttentionBackend
from llm_modules.nn.init import xavier_linears
from llm_modules.nn.kv_cache import KVCache, LayerCache
from llm_modules.nn.masks import AttentionMask
from llm_modules.nn.positions import check_declarations
from llm_modules.nn.tensor_parallel import TensorParallelPlan
from llm_modules.registry import ACTIVATIONS, ATTENTIONS, NORMS, POSITIONS, RESIDUALS, ConfigError, split_spec


def build_norm(cfg: Any, dim: int | None = None) -> nn.Module:
    """A norm of the config's kind over ``dim`` features (default: the hidden size)."""
    return NORMS.build(cfg.norm, dim=cfg.d_model if dim is None else dim, eps=cfg.norm_eps)


class Block(nn.Module):
    """One transformer layer: self-attention, optional cross-attention, feed-forward."""

    def __init__(self, cfg: Any, backend: AttentionBackend, *, cross: bool, alpha: float, beta: float):
        super().__init__()

        def attention() -> Attention:
            return Attention(
                cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.dim_per_head,
                cfg.bias if cfg.qkv_bias is None else cfg.qkv_bias, backend, cfg.attention_scale,
                cfg.attention_dropout, out_bias=cfg.bias if cfg.out_bias is None else cfg.out_bias,
                qk_norm=cfg.qk_norm, make_norm=lambda dim: build_norm(cfg, dim), softcap=cfg.attention_softcap,
            )

        self.attn = attention()
        self.cross_attn = attention() if cross else None
        self.ffn = ACTIVATIONS.build(
            cfg.activation, d_model=cfg.d_model, d_ff=cfg.d_ff, bias=cfg.bias, dropout=cfg.dropout
        )
        self.residual = RESIDUALS.build(
            cfg.residual, make_norm=lambda: build_norm(cfg), n_sublayers=3 if cross else 2, alpha=alpha, beta=beta
        )
        self.dropout = nn.Dropout(cfg.dropout)

    def layout_init(self) -> None:
        """The init the residual layout asks of this block (``nn.init``): DeepNorm's ``init_gain``
        (beta) gives DeepNet's Xavier init to the attention projections (each attention module
        says how) and to the feed-forward, whose own ``deepnet_init`` decides when it has
        parameters that are no projection (a router); without one, all its linears."""
        beta = self.residual.init_gain
        if beta == 1.0:
            return
        for attn in (self.attn, self.cross_attn):
            if attn is not None:
                attn.deepnet_init(beta)
        ffn_init = getattr(self.ffn, "deepnet_init", None)
        if callable(ffn_init):
            ffn_init(beta)
        else:
            xavier_linears(self.ffn, beta)

    def forward(
        self,
        x: torch.Tensor,
        mask: AttentionMask,
        position: nn.Module,
        positions: torch.Tensor,
        bias: torch.Tensor | None,
        memory: torch.Tensor | None = None,
        memory_mask: AttentionMask | None = None,
        cache: LayerCache | None = None,
    ) -> torch.Tensor:
        self_cache = cache.self_attn if cache is not None else None
        cross_cache = cache.cross_attn if cache is not None else None
        sublayers = [
            lambda h: self.dropout(
                self.attn(h, mask, position=position, positions=positions, bias=bias, cache=self_cache)
            )
        ]
        if self.cross_attn is not None:
            sublayers.append(
                lambda h: self.dropout(self.cross_attn(h, memory_mask, memory=memory, cache=cross_cache))
            )
        sublayers.append(lambda h: self.dropout(self.ffn(h)))
        return self.residual(x, sublayers)

    def tensor_parallel_plan(self) -> TensorParallelPlan:
        """Nothing of its own to split; its attention and feed-forward must each declare a plan
        (the residual layout's norms are replicated)."""
        parts = {"attn": "attention", "ffn": "activation"}
        if self.cross_attn is not None:
            parts["cross_attn"] = "attention"
        return TensorParallelPlan(parts=parts)


class Stack(nn.Module):
    """Embedded tokens -> hidden states: positions, optional embedding norm, blocks, final norm.

    ``bidirectional`` tells relative encodings (T5 buckets) whether keys to the right exist;
    ``prefix`` that the self-attention is a prefix-LM mask (bidirectional over a prefix, causal
    after), which some backends cannot compute.
    ``checkpointed`` holds the indices of the blocks whose activations are recomputed in the
    backward pass instead of kept (set with ``checkpoint_blocks``; empty by default).

    Layers may differ in their attention span (``cfg.layer_types``: "sliding" layers see the last
    ``sliding_window`` tokens, "full" ones everything); sliding layers rotate with the position
    encoding's ``for_sliding_layers()`` (Gemma 3's local RoPE base), the others with ``position``.
    """

    def __init__(
        self, cfg: Any, n_layers: int, *, cross: bool, bidirectional: bool, deepnorm: tuple[float, float],
        prefix: bool = False,
    ):
        super().__init__()
        self.position = POSITIONS.build(
            cfg.position, d_model=cfg.d_model, n_heads=cfg.n_heads, head_dim=cfg.dim_per_head,
            max_seq_len=cfg.max_seq_len, bidirectional=bidirectional,
        )
        # One backend for the whole stack, checked before any layer is built: a combination it
        # cannot serve fails here, naming the combination.
        backend = ATTENTIONS.build(cfg.attention, head_dim=cfg.dim_per_head)
        if cfg.layer_types is not None and len(cfg.layer_types) != n_layers:
            raise ConfigError(
                f"layer_types lists {len(cfg.layer_types)} layers, but a stack of this model has {n_layers} (an "
                "encoder-decoder's encoder); layer_types serves single-stack models: set it to null"
            )
        #: per block, whether it attends through the sliding window (every block when the window is
        #: set without layer_types)
        self.sliding = tuple(cfg.sliding_layers) if cfg.layer_types is not None \
            else (cfg.sliding_window is not None,) * n_layers
        local = self.position.for_sliding_layers() if any(self.sliding) else self.position
        self.sliding_position = None if local is self.position else local
        self.embedding_scale = float(cfg.embedding_scale)
        self.window = cfg.sliding_window
        # What needs more than a plain causal mask (padding is only known at run time, where the
        # backend itself must refuse a mask it cannot serve).
        masks = [
            reason
            for reason, needed in (
                ("bidirectional attention", bidirectional),
                ("cross-attention", cross),
                ("sliding_window", cfg.sliding_window),
                ("sparse_stride", cfg.sparse_stride),
            )
            if needed
        ]
        features = {
            key
            for key, needed in (
                ("bidirectional", bidirectional and not prefix), ("prefix", prefix), ("cross", cross),
                ("sliding_window", cfg.sliding_window), ("sparse_stride", cfg.sparse_stride),
                ("softcap", cfg.attention_softcap),
            )
            if needed
        }
        position_name = split_spec(cfg.position, "position")[0]
        check_declarations(self.position, position_name)
        backend.check(
            encoding=self.position, dropout=cfg.attention_dropout,
            needs_masks=bool(masks), position=position_name, masks=", ".join(masks),
            features=frozenset(features),
        )
        self.backend = backend
        self.embedding_norm = build_norm(cfg) if cfg.embedding_norm else None
        self.dropout = nn.Dropout(cfg.dropout)
        alpha, beta = deepnorm
        self.layers = nn.ModuleList(
            Block(cfg, backend, cross=cross, alpha=alpha, beta=beta) for _ in range(n_layers)
        )
        needs_final = self.layers[0].residual.needs_final_norm if n_layers else False
        self.final_norm = build_norm(cfg) if needs_final else nn.Identity()
        self.checkpointed: frozenset[int] = frozenset()

    def tensor_parallel_plan(self) -> TensorParallelPlan:
        """The position encodings must declare how their per-head state splits (blocks declare their own)."""
        parts = {"position": "position"}
        if self.sliding_position is not None:
            parts["sliding_position"] = "position"
        return TensorParallelPlan(parts=parts)

    def fsdp_units(self) -> list[nn.Module]:
        """What FSDP wraps one by one: each entry of ``layers`` (a block, or the wrapper that
        activation checkpointing put around it), so only one block's full weights exist at a time."""
        return list(self.layers)

    def checkpoint_blocks(self, indices: Iterable[int]) -> None:
        """Recompute these blocks in the backward pass: each keeps only its input alive instead of
        every intermediate (attention scores, feed-forward hidden), at the cost of one more forward
        of the block. Non-reentrant checkpointing, so blocks whose inputs need no gradient (frozen
        first layers) and keyword-free arguments such as the mask object work; dropout replays the
        same random numbers."""
        indices = frozenset(int(i) for i in indices)
        outside = sorted(i for i in indices if not 0 <= i < len(self.layers))
        if outside:
            raise IndexError(f"block indices {outside} are outside this stack's {len(self.layers)} blocks")
        self.checkpointed = indices

    def forward(
        self,
        x: torch.Tensor,
        mask: AttentionMask,
        positions: torch.Tensor,
        memory: torch.Tensor | None = None,
        memory_mask: AttentionMask | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """``positions`` (B, T) are the positions of the tokens in ``x``; with a ``cache`` these are
        the new tokens only, and ``mask`` spans the cached keys too (``q_offset`` = cached length)."""
        x = self.enter(x, positions)
        x = self.run_blocks(x, mask, positions, range(len(self.layers)), memory, memory_mask, cache)
        return self.final_norm(x)

    def enter(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """What embedded tokens go through before the first block (scale, absolute positions,
        embedding norm, dropout); a pipeline's first stage runs it, the others do not."""
        if self.embedding_scale != 1.0:  # in the activations' dtype, as transformers' Gemma
            x = x * torch.tensor(self.embedding_scale, dtype=x.dtype, device=x.device)
        x = self.position.embed(x, positions)
        if self.embedding_norm is not None:
            x = self.embedding_norm(x)
        return self.dropout(x)

    def run_blocks(
        self, x: torch.Tensor, mask: AttentionMask, positions: torch.Tensor, blocks: range,
        memory: torch.Tensor | None = None, memory_mask: AttentionMask | None = None, cache: KVCache | None = None,
    ) -> torch.Tensor:
        """The blocks numbered ``blocks`` in order (all of them, or a pipeline stage's own run)."""
        self.position.check_length(mask.q_len + mask.q_offset)
        bias = self.backend.score_bias(self.position, mask.q_len, mask.k_len, mask.q_offset)
        recompute = self.checkpointed and torch.is_grad_enabled()
        masks = self._layer_masks(mask)
        for i in blocks:
            layer, (layer_mask, position) = self.layers[i], masks[i]
            if recompute and cache is None and i in self.checkpointed:
                x = checkpoint(layer, x, layer_mask, position, positions, bias, memory, memory_mask,
                               use_reentrant=False)
            else:
                layer_cache = cache.layer(i) if cache is not None else None
                x = layer(x, layer_mask, position, positions, bias, memory, memory_mask, layer_cache)
        return x

    def _layer_masks(self, mask: AttentionMask) -> list[tuple[AttentionMask, nn.Module]]:
        """Each block's (self-attention mask, position encoding): sliding layers see ``mask`` with
        the window added and rotate with ``sliding_position`` (when the encoding has one)."""
        if not any(self.sliding):
            return [(mask, self.position)] * len(self.layers)
        windowed = dataclasses.replace(mask, window=self.window)
        local = self.sliding_position or self.position
        return [(windowed, local) if s else (mask, self.position) for s in self.sliding]
