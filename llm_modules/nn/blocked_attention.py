"""Causal self-attention of a CPU training step in fp32, one block of queries at a time.

torch's CPU kernel for ``scaled_dot_product_attention`` (a flash-attention loop) reaches about a
quarter of the CPU's matrix-product rate at training lengths. Here each block of ``BLOCK`` query
rows is two batched products against the keys it can see (the keys up to its last row, so about
half of the full square is computed), a softmax between them, and the backward is four batched
products per block. On the CPU we measured (AMD EPYC, 2 threads, q/k/v laid out as the attention
module gives them) forward and backward together take 1.07-1.22x less time than the fused kernel
from 128 to 512 tokens at head dim 64, and the same at head dim 128
(``python benchmarks/attention_cpu.py``); that is about 3% of the ``cpu-llama`` training step.
Below ``MIN_LEN`` tokens, and for a forward alone (evaluation, generation), the fused kernel is
as fast or faster, so those keep it.

The price is memory: the backward reads the softmax probabilities that the forward kept (about
``T * T / 2`` fp32 values per head and sequence: 0.6 KB per token and head at ``T = 256``), where
the fused kernel keeps one log-sum-exp per row and recomputes them. So this path stops at
``MAX_LEN`` tokens, past which the fused kernel's memory saving grows with the square of the
length and its own speed catches up. ``llm-modules estimate`` counts what this path keeps, as it
traces the real modules (``estimate.activations``); its trace of a GPU run turns the path off.

Grouped-query attention (fewer key/value heads than query heads, each shared by a group of
query heads) stacks a group's query rows into one product against the group's keys: no copy of
the keys and values per query head, and the products over the stacked rows add the group's
shares into the key and value gradients. There it takes 1.17-1.73x less time than the fused
kernel with ``enable_gqa`` (3 or 4 query heads per key/value head, 256 and 512 tokens).

It serves plain causal self-attention only (no bias, no dropout, no padding or other mask
structure) of fp32 plain CPU tensors that need gradients, without autocast and outside a compiled
graph; everything else takes ``scaled_dot_product_attention`` as before. Values equal the fused
kernel's up to float rounding (``tests/unit/test_blocked_attention.py``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch.autograd.function import once_differentiable

from llm_modules.nn.fast import plain_tensors

#: query rows per block: 64 was the fastest of 32, 64 and 128 at every measured length
BLOCK = 64
#: the shortest sequence this path takes: below it the fused kernel is as fast (module doc)
MIN_LEN = 128
#: the longest sequence this path takes (module doc: the kept probabilities grow as T^2)
MAX_LEN = 512

_enabled = True


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """Send every attention to the fused kernel for the duration: for the memory estimator's trace of
    a GPU run, which must keep what the GPU's kernels keep, not what this CPU path keeps."""
    global _enabled
    old, _enabled = _enabled, False
    try:
        yield
    finally:
        _enabled = old


def serves(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    """Whether causal attention of (B, H, T, D) queries over (B, H_kv, T, D) keys and values (H a
    multiple of H_kv) takes this path (module doc)."""
    if not _enabled or q.dim() != 4 or k.dim() != 4 or v.dim() != 4 or k.shape[:3] != v.shape[:3]:
        return False
    if q.shape[0] != k.shape[0] or q.shape[2:] != k.shape[2:] or k.shape[1] < 1 or q.shape[1] % k.shape[1]:
        return False
    if not (q.numel() and k.numel() and v.numel()):  # an empty batch (or width): nothing to gain
        return False
    if not MIN_LEN <= q.shape[2] <= MAX_LEN or q.device.type != "cpu":
        return False
    if not torch.is_grad_enabled() or not (q.requires_grad or k.requires_grad or v.requires_grad):
        return False
    if any(t.dtype != torch.float32 for t in (q, k, v)):
        return False
    if torch.is_autocast_enabled("cpu") or torch.compiler.is_compiling():
        return False
    return plain_tensors(q, k, v)


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """``softmax(scale * q k^T, causal) v`` of (B, H, T, D) queries over (B, H_kv, T, D) keys and
    values, query head ``h`` reading key/value head ``h // (H / H_kv)`` (grouped-query attention, as
    ``scaled_dot_product_attention(enable_gqa=True)``); of any length: :func:`serves` says when the
    model takes it."""
    return _BlockedCausal.apply(q, k, v, scale)


def _blocks(length: int) -> list[tuple[int, int]]:
    """(first, end) query rows of each block."""
    return [(start, min(start + BLOCK, length)) for start in range(0, length, BLOCK)]


def _upper(size: int, device: torch.device) -> torch.Tensor:
    """(size, size) bool, True above the diagonal: the keys a block's rows may not see."""
    return torch.ones(size, size, dtype=torch.bool, device=device).triu_(1)


def _rows(x: torch.Tensor) -> torch.Tensor:
    """(B, H, T, D) as (B * H, T, D): a view when the layout allows, else a copy."""
    return x.reshape(-1, *x.shape[2:])


def _scaled_rows(q: torch.Tensor, scale: float) -> torch.Tensor:
    """``scale * q`` as (B * H, T, D), in one pass: the scale applied once to the queries rather
    than to every score."""
    return torch.mul(q, scale, out=q.new_empty(q.shape)).view(-1, *q.shape[2:])


def _by_group(x: torch.Tensor, groups: int) -> torch.Tensor:
    """A (B * H, T, D) tensor as (B * H_kv, groups, T, D): the query heads of each key/value head
    together (a view)."""
    return x.view(-1, groups, *x.shape[1:])


def _group_rows(x: torch.Tensor, groups: int, start: int, end: int) -> torch.Tensor:
    """Rows ``start:end`` of each head of a (B * H, T, D) tensor, the heads of a key/value group
    stacked: (B * H_kv, groups * (end - start), D). A view when ``groups`` is 1, else a copy."""
    rows = _by_group(x, groups)[:, :, start:end]
    return rows.reshape(rows.shape[0], -1, rows.shape[-1])


def _forward(queries, keys, values, batch: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The outputs (B, H, T, D), laid out as (B, T, H, D) so that the output projection's
    (B, T, H * D) input is a view of them, of (B * H, T, D) queries (scaled) and (B * H_kv, T, D)
    keys and values; and each block's probabilities (B * H_kv, groups * rows, keys). The query heads
    of a key/value group share each product: their rows are stacked against the group's keys."""
    heads, length, width = queries.shape[0] // batch, queries.shape[1], values.shape[2]
    kv_heads = keys.shape[0] // batch
    groups = heads // kv_heads
    out = queries.new_empty((batch, length, heads, width))
    probs = []
    for start, end in _blocks(length):
        size = end - start
        scores = torch.bmm(_group_rows(queries, groups, start, end), keys[:, :end].transpose(1, 2))
        # the block's own keys are causal among themselves (key start + j hidden from row start + r
        # when j > r); the keys before the block are all visible
        scores.view(-1, groups, size, end)[..., start:end].masked_fill_(_upper(size, scores.device), float("-inf"))
        block_probs = torch.softmax(scores, dim=-1)
        del scores
        block_out = torch.bmm(block_probs, values[:, :end]).view(batch, kv_heads, groups, size, width)
        out[:, start:end].unflatten(2, (kv_heads, groups)).copy_(block_out.permute(0, 3, 1, 2, 4))
        probs.append(block_probs)
    return out.transpose(1, 2), probs


class _BlockedCausal(torch.autograd.Function):
    """Keeps scale * q, k, v, the output and each block's probabilities; the backward is, per
    block, dV += P^T dO, dS = P * (dO V^T - rowsum(dO * O)), dQ = scale * dS K, dK += dS^T (scale * Q)
    (the products over a group's stacked rows add its query heads' shares into dK and dV)."""

    @staticmethod
    def forward(ctx, q, k, v, scale):
        # kept as (B * H, T, D): scale * q (a new tensor), and k, v as views when their layout allows,
        # else the copies the forward made, which the backward would otherwise make again
        queries, keys, values = _scaled_rows(q, scale), _rows(k), _rows(v)
        out, probs = _forward(queries, keys, values, batch=q.shape[0])
        ctx.scale, ctx.shapes = scale, (q.shape, k.shape, v.shape)
        ctx.save_for_backward(queries, keys, values, out, *probs)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        queries, keys, values, out, *probs = ctx.saved_tensors
        groups, length = queries.shape[0] // keys.shape[0], queries.shape[1]
        # rowsum(dO * O) = rowsum(P * dP): the softmax's backward, once per row
        delta = _rows(torch.linalg.vecdot(grad, out).unsqueeze(-1))
        grad_out = _rows(grad)
        grad_q, grad_k, grad_v = (t.new_empty(t.shape) for t in (queries, keys, values))
        # the last block sees every key, so it writes dK and dV whole (beta 0: the empty buffers are
        # not read); the blocks before it add to the keys they see
        for start, end in reversed(_blocks(length)):
            block_probs, beta = probs.pop(), 0 if end == length else 1
            rows_grad = _group_rows(grad_out, groups, start, end)
            _add_product(grad_v, end, block_probs.transpose(1, 2), rows_grad, beta)
            grad_scores = torch.baddbmm(_group_rows(delta, groups, start, end), rows_grad,
                                        values[:, :end].transpose(1, 2), beta=-1)
            grad_scores.mul_(block_probs)
            block_grad_q = torch.bmm(grad_scores, keys[:, :end])
            _by_group(grad_q, groups)[:, :, start:end] = block_grad_q.view(-1, groups, end - start, grad_q.shape[-1])
            # the block's stacked queries are gathered again rather than kept from the forward: a copy
            # of a few rows per head (none without groups) against keeping every block's
            _add_product(grad_k, end, grad_scores.transpose(1, 2), _group_rows(queries, groups, start, end), beta)
        grad_q.mul_(ctx.scale)
        q_shape, k_shape, v_shape = ctx.shapes
        return grad_q.view(q_shape), grad_k.view(k_shape), grad_v.view(v_shape), None


def _add_product(total: torch.Tensor, end: int, a: torch.Tensor, b: torch.Tensor, beta: int) -> None:
    """``total[:, :end] = beta * total[:, :end] + a @ b`` (``beta`` 0 or 1). Into a slice, the
    product is made apart and added: torch's batched product into a strided output runs one small
    product per batch element, several times slower."""
    if beta == 0 and end == total.shape[1]:
        torch.bmm(a, b, out=total)
    else:
        total[:, :end].add_(torch.bmm(a, b))
