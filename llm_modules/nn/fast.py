"""When the hand-tuned fast paths of ``nn/`` apply.

Several modules have a fast path (RMSNorm and rotary embeddings with hand-written backwards,
``tests/unit/test_fast_paths.py`` compares each with its reference). They take plain tensors only: a
tensor subclass (DTensor under FSDP2 / tensor parallelism, a quantized weight, the fake tensors of
tracing) goes the reference way, whose ops every subclass already supports.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

_PLAIN = (torch.Tensor, nn.Parameter)


def plain_tensors(*tensors: torch.Tensor) -> bool:
    """True when every tensor is a plain ``torch.Tensor`` (or a parameter of one)."""
    return all(type(t) in _PLAIN for t in tensors)


@contextlib.contextmanager
def also_plain(*types: type) -> Iterator[None]:
    """Let tensors of ``types`` take the fast paths for the duration: for a subclass that stands for
    a plain tensor (the estimator's fake tensors, which must run the ops a real run runs)."""
    global _PLAIN
    old = _PLAIN
    _PLAIN = (*old, *types)
    try:
        yield
    finally:
        _PLAIN = old
