"""Memory savers applied to the torch model before training: freezing, activation checkpointing, compile.

(Skeleton: filled in by the memory-savers work.)
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn


@dataclass
class MemoryConfig:
    """Plain data: what to trade for memory. ``activation_checkpointing``: False, True/"all", "every:N",
    or a list of block indices; ``freeze_*``: which parameters do not train; ``compile``: torch.compile."""

    activation_checkpointing: bool | str | list[int] = False
    freeze_embeddings: bool = False
    freeze_layers: int = 0
    freeze_patterns: list[str] = field(default_factory=list)
    compile: bool = False


def apply_memory_savers(model: nn.Module, memory: MemoryConfig) -> None:
    """Freeze and checkpoint per ``memory`` (in place)."""
