"""The floating-point dtype of a model's weights: kept as stored, or cast on request.

Checkpoints are published in bf16 or fp16; loading one into fp32 doubles its memory. ``"auto"`` keeps
the dtype the weights are stored in (the dtype of most of their floating-point elements: a stray fp32
tensor in a bf16 checkpoint follows the rest, since one model computes in one dtype); a name casts
every floating-point tensor. Integer tensors (none in a float model) are never cast. A tensor already
in the target dtype is the same tensor, not a copy, so a memory-mapped one stays mapped.
"""

from __future__ import annotations

from collections import Counter
from typing import Mapping

import torch

from llm_modules.registry import ConfigError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
#: what the ``dtype`` options accept
CHOICES = ("auto", *DTYPES)


def resolve(dtype: str | torch.dtype | None, what: str = "dtype") -> torch.dtype | None:
    """The torch dtype a ``dtype`` option names; None for ``"auto"`` (or None): as stored."""
    if dtype is None or dtype == "auto":
        return None
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    name = str(dtype).removeprefix("torch.")
    if name not in DTYPES:
        raise ConfigError(f"{what}: {dtype!r} is not one of {', '.join(CHOICES)}")
    return DTYPES[name]


def stored(weights: Mapping[str, torch.Tensor]) -> torch.dtype | None:
    """The dtype of most floating-point elements of ``weights`` (None: no floating-point tensor)."""
    counts: Counter = Counter()
    for tensor in weights.values():
        if tensor.is_floating_point():
            counts[tensor.dtype] += tensor.numel()
    return counts.most_common(1)[0][0] if counts else None


def cast(weights: Mapping[str, torch.Tensor], dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    """``weights`` with every floating-point tensor in ``dtype`` (``None``: their stored dtype, as
    ``stored`` decides). Tensors under two names (a tied head) stay one tensor."""
    dtype = dtype or stored(weights)
    done: dict[int, torch.Tensor] = {}
    out = {}
    for name, tensor in weights.items():
        if id(tensor) not in done:
            done[id(tensor)] = tensor.to(dtype) if tensor.is_floating_point() and tensor.dtype != dtype else tensor
        out[name] = done[id(tensor)]
    return out


def hf_fields(weights: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """config.json's record of the weights' dtype: ``dtype`` (transformers 5) and ``torch_dtype``
    (older), which ``from_pretrained(dtype="auto")`` reads; empty when there is no float tensor."""
    dtype = stored(weights)
    name = next((n for n, d in DTYPES.items() if d == dtype), None)
    return {"dtype": name, "torch_dtype": name} if name else {}
