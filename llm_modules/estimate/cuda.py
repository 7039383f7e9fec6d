"""What a CUDA GPU keeps for the backward pass that the CPU trace does not: the one place that says so.

``estimate.trace`` runs the CPU's paths (``estimate.meta_cpu``), so it measures what a CPU run saves.
For a GPU target (``--device cuda``, the default) these differences are applied, and nothing else:

- dropout: CUDA's fused kernel (``native_dropout``) keeps a bool mask, 1 byte per element; the
  CPU keeps its scaled noise in the input's dtype (``bytes_on_gpu``);
- layer norm under autocast: CUDA's autocast runs ``layer_norm`` in fp32, so a half-precision
  input is kept as an fp32 copy; the CPU's runs it in the input's dtype (``bytes_on_gpu``);
- ``scaled_dot_product_attention`` with an additive bias that needs a gradient (T5's learned
  buckets): the CPU falls back to the math path (scaled q and k, v, the probabilities); CUDA's
  memory-efficient kernel keeps q, k, v, the bias, the output and an fp32 log-sum-exp per head
  and query (``kernels``);
- causal fp32 attention: the CPU takes ``nn.blocked_attention``, which keeps the softmax
  probabilities; a GPU's fused kernel keeps a log-sum-exp instead, so the trace of a GPU run
  turns that path off (``gpu_kernels``) and traces the fused kernel's.

Attention backends that run only on CUDA (the ``flash_attn`` and ``xformers`` plugins) and
``flex`` (no CPU backward) declare so (``runs_on_cpu``, ``cpu_backward``) and cannot run in the
trace: ``as_sdpa`` replaces them by
``sdpa``, whose fused kernels keep the same tensors (q, k, v, output, a log-sum-exp), and the
estimate says so. Parameter counts are unchanged by it: a backend holds no parameters
(``AttentionBackend`` is no ``nn.Module``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from llm_modules.estimate.trace import Storage
from llm_modules.nn import blocked_attention
from llm_modules.registry import ATTENTIONS, split_spec


def as_sdpa(cfg):
    """(the config to trace, a note or None): a backend that declares it cannot run here
    (``runs_on_cpu``) or has no CPU backward (``cpu_backward``) is traced as ``sdpa``."""
    backend, _ = split_spec(cfg.attention, "attention")
    declared = ATTENTIONS.get(backend).factory
    if getattr(declared, "runs_on_cpu", True) and getattr(declared, "cpu_backward", True):
        return cfg, None
    why = "runs on CUDA only" if not getattr(declared, "runs_on_cpu", True) else "has no CPU backward"
    return cfg.replace(attention="sdpa"), (f"attention {backend!r} cannot run in the CPU trace (it declares it {why}); "
                                           "traced as 'sdpa', whose fused kernel keeps the same tensors")


def bytes_on_gpu(storage: Storage) -> int:
    """The bytes a GPU run keeps for a storage the CPU trace kept (module doc)."""
    if storage.dropout_noise:
        return storage.numel
    if storage.half_norm_input:
        return storage.numel * 4
    return storage.nbytes


class _EfficientAttention(torch.autograd.Function):
    """Stands for CUDA's memory-efficient attention kernel: keeps what its backward reads."""

    @staticmethod
    def forward(ctx, q, k, v, bias):
        # (B, H, T, D) laid out as (B, T, H, D), as the kernel writes it: the output projection's
        # (B, T, H*D) input is then a view of it, not a copy
        batch, heads, length, _ = q.shape
        out = q.new_empty((batch, length, heads, v.shape[-1])).transpose(1, 2)
        lse = q.new_empty(q.shape[:-1], dtype=torch.float32)
        ctx.save_for_backward(q, k, v, bias, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError("_EfficientAttention stands for a CUDA kernel in the estimator's trace, which never "
                           "runs backward; it is no attention implementation")


@contextlib.contextmanager
def gpu_kernels() -> Iterator[None]:
    """What the trace of a GPU run wraps around the model: its attention as a GPU computes it
    (``kernels``, and torch's fused kernel rather than the CPU's ``nn.blocked_attention``)."""
    with blocked_attention.disabled(), kernels():
        yield


class kernels(TorchFunctionMode):
    """Sends sdpa with a bias that needs a gradient to ``_EfficientAttention`` (module doc)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            mask = kwargs.get("attn_mask", args[3] if len(args) > 3 else None)
            if isinstance(mask, torch.Tensor) and mask.requires_grad and mask.is_floating_point():
                return _EfficientAttention.apply(*args[:3], mask)
        return func(*args, **kwargs)
