"""LoRA (Hu et al., 2021): a trainable low-rank update ``scale * B @ A`` beside frozen linear weights.

Each targeted ``nn.Linear`` becomes a ``LoRALinear``: a ``peft.wrapped_linear.WrappedLinear`` (the
*same* weight and bias Parameter objects, so base names and a base checkpoint still fit; merge,
unmerge, unload to a plain ``nn.Linear`` and switching off live there, shared with QLoRA) that adds
``lora_a`` (r x in) and ``lora_b`` (out x r). B starts at zero, so the adapted model starts as
exactly the base model. ``merge`` adds the update into the weight (inference at base cost),
``unload`` also swaps the layer back so the state dict is the base layout again (export with
``interop.to_hf``). What this file keeps is LoRA's own math: the options, the scale, A's init, the
update ``delta`` and its weight form ``delta_weight``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from llm_modules.peft.targets import as_patterns
from llm_modules.peft.wrapped_linear import LinearWrappingMethod, WrappedLinear
from llm_modules.registry import PEFT_METHODS, ConfigError

INITS = ("kaiming", "gaussian")


class LoRALinear(WrappedLinear):
    """``base(x) + scale * dropout(x) @ A^T @ B^T``, with the base layer's own Parameters."""

    def __init__(self, base: nn.Linear, r: int, scale: float, dropout: float = 0.0, init: str = "kaiming"):
        super().__init__(base)
        self.r, self.scale = r, scale
        factory = self.new_tensor_options()
        self.lora_a = nn.Parameter(torch.empty(r, self.in_features, **factory))
        self.lora_b = nn.Parameter(torch.zeros(self.out_features, r, **factory))
        if init == "gaussian":
            nn.init.normal_(self.lora_a, std=1.0 / r)
        else:  # nn.Linear's own init for A, as the LoRA reference code does
            nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        h = self.lora_dropout(x).to(self.lora_a.dtype)
        return self.scale * F.linear(F.linear(h, self.lora_a), self.lora_b)

    def delta_weight(self) -> torch.Tensor:
        return (self.scale * (self.lora_b @ self.lora_a)).to(self.weight.dtype)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, r={self.r}, scale={self.scale:.4g}"


@PEFT_METHODS.register("lora")
class LoRA(LinearWrappingMethod):
    """Low-rank updates beside frozen linear layers; mergeable into the weights (Hu et al., 2021).

    ``targets``: shell-style patterns over linear-layer names (``*.q``, ``*.ffn.*``);
    ``rslora``: scale by ``alpha / sqrt(r)`` (rank-stabilized, Kalajdzievski 2023) instead of
    ``alpha / r``; ``init``: how A starts (``kaiming`` or ``gaussian``; B always starts at zero).
    """

    layer_type: type[LoRALinear] = LoRALinear

    def __init__(
        self,
        r: int = 8,
        alpha: float = 16,
        dropout: float = 0.0,
        targets: str | Iterable[str] = ("*.q", "*.v"),
        rslora: bool = False,
        init: str = "kaiming",
    ):
        if isinstance(r, bool) or not isinstance(r, int) or r < 1:
            raise ConfigError(f"peft lora r: the rank must be a positive integer; got {r!r}")
        if not 0.0 <= float(dropout) < 1.0:
            raise ConfigError(f"peft lora dropout must be in [0, 1); got {dropout!r}")
        if init not in INITS:
            raise ConfigError(f"peft lora init must be one of {', '.join(INITS)}; got {init!r}")
        self.r, self.alpha, self.dropout = r, float(alpha), float(dropout)
        self.targets = as_patterns(targets, "peft lora targets")
        self.rslora, self.init = bool(rslora), init

    @property
    def scale(self) -> float:
        return self.alpha / (math.sqrt(self.r) if self.rslora else self.r)

    def make_layer(self, linear: nn.Linear) -> LoRALinear:
        return self.layer_type(linear, self.r, self.scale, self.dropout, self.init)
