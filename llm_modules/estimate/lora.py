"""What LoRA trains: its parameter count and which linear layers it adapts, for the memory estimate.

The targets are matched by ``peft.targets.match_modules`` against the model built on the meta
device, exactly as ``peft.lora.LoRA`` matches them when it is applied, so a pattern that matches
nothing fails here with the same message.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: LoRA's own default targets (``peft/lora.py``: the query and value projections, as in Hu et al.)
DEFAULT_TARGETS = ("*.q", "*.v")

_IN_BLOCK = re.compile(r"^(?:.*\.)?layers\.\d+\.")


@dataclass(frozen=True)
class LoraPlan:
    """``parameters``: LoRA's A and B matrices over all targets; ``names``: the targets as named
    inside a block (``attn.q``, ``ffn.up``) or outside any (``head.proj``)."""

    rank: int
    parameters: int
    #: the patterns as given, for ``activations.Training``
    patterns: tuple[str, ...]
    names: frozenset[str]
    layers: int


def plan_lora(cfg, kind: str, rank: int, targets=DEFAULT_TARGETS) -> LoraPlan:
    """LoRA of rank ``rank`` on the linear layers matching ``targets`` (shell-style patterns)."""
    from llm_modules.estimate.params import meta_model
    from llm_modules.peft.targets import as_patterns, match_modules

    patterns = as_patterns(targets, "--lora-targets")
    model = meta_model(cfg, kind)
    matched = match_modules(model, patterns, "--lora-targets")
    parameters = sum(rank * (linear.in_features + linear.out_features) for _, linear in matched)
    names = frozenset(_IN_BLOCK.sub("", name) for name, _ in matched)
    return LoraPlan(rank=rank, parameters=parameters, patterns=tuple(patterns), names=names, layers=len(matched))
