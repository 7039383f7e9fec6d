"""Token cross-entropy over (..., vocab) logits without full-size temporaries.

``F.cross_entropy(logits.float(), ...)`` makes an fp32 copy of half-precision logits, a full-size
log-softmax in the forward, and in the backward a zero-filled full-size buffer plus the softmax
gradient: three or four (tokens x vocab) tensors beside the logits (each 67 MB for 8 x 256 tokens
of a 8192 vocabulary). Here the forward reads the logits in row chunks (fp32 per chunk only) and
keeps one log-sum-exp per token; the backward writes the gradient, chunk by chunk, into one
buffer of the logits' dtype. fp32 logits need no copy, and there one fused log-softmax over
all rows, kept for the backward instead of the logits, is faster than the chunk loop
(``_CrossEntropyFP32``). Same loss and gradient up to float rounding
(``tests/unit/test_fast_paths.py``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from llm_modules.nn.fast import plain_tensors

#: fp32 elements per chunk (8 MB): large enough to amortize the loop, small enough to stay in cache
CHUNK_ELEMENTS = 1 << 21


@contextlib.contextmanager
def one_chunk() -> Iterator[None]:
    """Run the loss in one chunk of rows for the duration: the same tensors kept for the backward,
    without the chunk loop (the estimator's trace, where the loop's workspace is counted apart)."""
    global CHUNK_ELEMENTS
    old = CHUNK_ELEMENTS
    CHUNK_ELEMENTS = 1 << 62
    try:
        yield
    finally:
        CHUNK_ELEMENTS = old


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Mean cross-entropy of ``logits`` (..., V) against ``targets`` (...), over the targets that
    are not ``ignore_index`` (NaN when there are none, as ``F.cross_entropy``), computed in fp32."""
    flat, flat_targets = logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)
    if not logits.is_floating_point() or not plain_tensors(logits, targets) or flat.stride(-1) != 1:
        return F.cross_entropy(flat.float(), flat_targets, ignore_index=ignore_index)
    if logits.dtype == torch.float32:
        return _CrossEntropyFP32.apply(flat, flat_targets, ignore_index)
    return _CrossEntropy.apply(flat, flat_targets, ignore_index)


def _chunks(rows: int, vocab: int) -> list[slice]:
    size = max(1, CHUNK_ELEMENTS // max(vocab, 1))
    return [slice(start, min(start + size, rows)) for start in range(0, rows, size)]


def _valid_targets(targets: torch.Tensor, ignore_index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(which targets count, the targets with the ignored ones pointed at class 0, their count)."""
    valid = targets != ignore_index
    return valid, torch.where(valid, targets, 0), valid.sum()


class _CrossEntropyFP32(torch.autograd.Function):
    """fp32 logits: there is no fp32 copy to avoid, so the forward is torch's one-pass log-softmax
    over all rows, kept for the backward in place of the logits (the same bytes: the logits
    themselves are freed once the caller drops them), and the backward one exp, one scale and
    a scatter, in place over what it kept. The chunk loop of ``_CrossEntropy`` costs more here
    than it saves: it runs about ten kernels per chunk over the same data, which on a few cores is
    slower than the single fused one (``benchmarks/train_step.py``)."""

    @staticmethod
    def forward(ctx, logits, targets, ignore_index):
        valid, safe, count = _valid_targets(targets, ignore_index)
        log_probs = torch.log_softmax(logits, dim=-1)
        picked = log_probs.gather(1, safe.unsqueeze(1)).squeeze(1)
        loss = -torch.where(valid, picked, 0.0).sum() / count
        ctx.save_for_backward(log_probs, safe, valid, count)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        log_probs, safe, valid, count = ctx.saved_tensors
        # d loss / d logits = (softmax - onehot(target)) * grad / count, on valid rows only
        scale = torch.where(valid, grad_loss / count, 0.0).unsqueeze(1)
        # the gradient overwrites the kept log-probabilities, which nothing reads after this: no
        # second (tokens x vocab) buffer to allocate (a second backward through this graph fails
        # autograd's version check instead of reading them)
        grad = log_probs.exp_().mul_(scale)
        grad.scatter_add_(1, safe.unsqueeze(1), -scale)
        return grad, None, None


class _CrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, targets, ignore_index):
        rows, vocab = logits.shape
        valid, safe, count = _valid_targets(targets, ignore_index)
        lse = torch.empty(rows, dtype=torch.float32, device=logits.device)
        for part in _chunks(rows, vocab):
            lse[part] = torch.logsumexp(logits[part].float(), dim=-1)
        picked = logits.gather(1, safe.unsqueeze(1)).squeeze(1).float()
        loss = torch.where(valid, lse - picked, 0.0).sum() / count
        ctx.save_for_backward(logits, lse, safe, valid, count)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        logits, lse, safe, valid, count = ctx.saved_tensors
        # d loss / d logits = (softmax - onehot(target)) * grad / count, on valid rows only
        scale = torch.where(valid, grad_loss.float() / count, 0.0)
        grad = torch.empty_like(logits)
        for part in _chunks(*logits.shape):
            out = grad[part]
            if logits.dtype == torch.float32:
                probs = torch.sub(logits[part], lse[part, None], out=out)
            else:
                probs = logits[part].float().sub_(lse[part, None])
            probs.exp_().mul_(scale[part, None])
            probs.scatter_add_(1, safe[part, None], -scale[part, None])
            if probs is not out:
                out.copy_(probs)
        return grad, None, None
