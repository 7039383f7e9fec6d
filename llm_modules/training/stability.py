"""Loss-spike and non-finite guards. (Skeleton: filled in by the stability work.)"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class StabilityConfig:
    """Plain data: when a training batch is skipped, and when training rolls back."""

    spike_guard: bool = False
