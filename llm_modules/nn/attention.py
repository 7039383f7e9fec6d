"""Multi-head attention with grouped/multi-query keys and values, over any registered backend."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from llm_modules.nn.attention_backends import AttentionBackend, default_scale
from llm_modules.nn.kv_cache import CacheEntry
from llm_modules.nn.linear import Linear
from llm_modules.nn.masks import AttentionMask
from llm_modules.nn.positions import PositionEncoding
from llm_modules.nn.tensor_parallel import COLWISE, ROWWISE, Divisible, TensorParallelPlan, TensorParallelRefusal

NormFactory = Callable[[int], nn.Module]


class Attention(nn.Module):
    """Projections around an attention backend.

    ``n_kv_heads`` < ``n_heads`` shares each key/value head among a group of query heads
    (GQA; 1 = MQA). A cross-attention module takes keys and values from ``memory``.

    ``bias`` is the q/k/v projections' bias, ``out_bias`` the output projection's (None: ``bias``).
    ``qk_norm`` normalizes queries and keys before the rotation with norms made by ``make_norm(dim)``:
    ``"head"`` one norm over each head's features (shared by the heads), ``"all"`` one over the whole
    projection. ``softcap`` asks the backend for ``cap * tanh(scores / cap)`` before the mask.
    """

    #: the math ``nn.decode_step`` reproduces for this class itself (a subclass declares its own)
    lean_decode = "attention"

    #: the projection that writes into the residual stream (scaled down with depth by ``nn.init``)
    residual_outputs = ("o",)

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        n_kv_heads: int,
        head_dim: int,
        bias: bool,
        backend: AttentionBackend,
        scale: float | None = None,
        dropout: float = 0.0,
        *,
        out_bias: bool | None = None,
        qk_norm: str | None = None,
        make_norm: NormFactory | None = None,
        softcap: float | None = None,
    ):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, head_dim
        self.q = Linear(d_model, n_heads * head_dim, bias=bias)
        self.k = Linear(d_model, n_kv_heads * head_dim, bias=bias)
        self.v = Linear(d_model, n_kv_heads * head_dim, bias=bias)
        self.o = Linear(n_heads * head_dim, d_model, bias=bias if out_bias is None else out_bias)
        self.qk_norm = qk_norm
        self.q_norm = self.k_norm = None
        if qk_norm is not None:
            if make_norm is None:
                raise ValueError("qk_norm needs make_norm, the factory of its norms")
            per_head = qk_norm == "head"
            self.q_norm = make_norm(head_dim if per_head else n_heads * head_dim)
            self.k_norm = make_norm(head_dim if per_head else n_kv_heads * head_dim)
        self.backend = backend
        self.scale = default_scale(head_dim) if scale is None else scale
        self.dropout = dropout
        self.softcap = softcap

    def forward(
        self,
        x: torch.Tensor,
        mask: AttentionMask,
        *,
        position: PositionEncoding | None = None,
        positions: torch.Tensor | None = None,
        bias: torch.Tensor | None = None,
        memory: torch.Tensor | None = None,
        cache: CacheEntry | None = None,
    ) -> torch.Tensor:
        """``cache`` (decoding): self-attention appends this call's keys/values to it and attends
        over all of them; cross-attention projects ``memory`` once and reuses it afterwards."""
        q = self._heads(self._normed(self.q(x), self.q_norm))
        if memory is not None and cache is not None and not cache.is_empty:
            k, v = cache.keys, cache.values
        else:
            source = x if memory is None else memory
            k, v = self._heads(self._normed(self.k(source), self.k_norm)), self._heads(self.v(source))
            if position is not None and positions is not None:
                q, k = position.rotate(q, k, positions, positions)
            if cache is not None:
                if memory is None:
                    k, v = cache.append(k, v)
                else:
                    cache.store(k, v)
        dropout = self.dropout if self.training else 0.0
        if self.softcap is None:
            out = self.backend(q, k, v, mask, bias, self.scale, dropout)
        else:  # only backends that declare supports_softcap get the argument (checked at build)
            out = self.backend(q, k, v, mask, bias, self.scale, dropout, softcap=self.softcap)
        return self.o(out.transpose(1, 2).flatten(2))

    def _normed(self, projected: torch.Tensor, norm: nn.Module | None) -> torch.Tensor:
        """QK-norm of a projection (B, T, heads * head_dim): over the whole of it, or per head."""
        if norm is None:
            return projected
        if self.qk_norm == "all":
            return norm(projected)
        return norm(projected.unflatten(-1, (-1, self.head_dim))).flatten(-2)

    def tensor_parallel_plan(self) -> TensorParallelPlan | TensorParallelRefusal:
        """q, k, v by columns (each rank owns n_heads/tp query heads and n_kv_heads/tp key/value
        heads, contiguous runs), o by rows (its all-reduce restores the full hidden state). A
        per-head QK-norm is replicated (every rank normalizes its own heads alike); one over the
        whole projection needs every head's features at once, so it is refused."""
        if self.qk_norm == "all":
            return TensorParallelRefusal(
                "normalizes queries and keys over all heads at once (qk_norm: all), which a rank holding "
                "only its heads cannot compute", "use qk_norm: head, or tensor_parallel_size: 1",
            )
        def whole_heads(field: str, value: int, what: str) -> Divisible:
            return Divisible(field, value, what, f"each rank must own whole heads: choose {field}")

        return TensorParallelPlan(
            layout={"q": COLWISE, "k": COLWISE, "v": COLWISE, "o": ROWWISE},
            divisible=(whole_heads("n_heads", self.n_heads, "the number of query heads"),
                       whole_heads("n_kv_heads", self.n_kv_heads, "the number of key/value heads")),
        )

    def deepnet_init(self, beta: float) -> None:
        """DeepNet's init (``Block.layout_init``): Xavier-normal, gain 1 for queries and keys and
        ``beta`` for values and the output projection."""
        for proj, gain in ((self.q, 1.0), (self.k, 1.0), (self.v, beta), (self.o, beta)):
            nn.init.xavier_normal_(proj.weight, gain=gain)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, heads * head_dim) -> (B, heads, T, head_dim). The head count is read from the
        tensor, not from ``n_heads``: a projection split across tensor-parallel ranks yields only
        this rank's heads, and the same code then serves the shard."""
        return x.unflatten(-1, (-1, self.head_dim)).transpose(1, 2)

    def extra_repr(self) -> str:
        return f"heads={self.n_heads}, kv_heads={self.n_kv_heads}, head_dim={self.head_dim}, backend={self.backend!r}"
