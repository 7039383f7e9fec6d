"""LoRA (Hu et al., 2021): a trainable low-rank update ``scale * B @ A`` beside frozen linear weights.

Each targeted ``nn.Linear`` becomes a ``LoRALinear`` that holds the *same* weight and bias
Parameter objects, so base names (``stack.layers.0.attn.q.weight``) and a base checkpoint still
fit, and adds ``lora_a`` (r x in) and ``lora_b`` (out x r). B starts at zero, so the adapted model
starts as exactly the base model. ``merge`` adds the update into the weight (inference at base
cost), ``unload`` also swaps the layer back to a plain ``nn.Linear`` so the state dict is the base
layout again (export with ``interop.to_hf``). ``disabled`` (``peft.adapters_disabled``) clears each
layer's ``enabled`` flag so it computes the base layer alone; a merged update cannot be taken
out of the weights exactly, so that is refused.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from contextlib import AbstractContextManager

import torch
import torch.nn.functional as F
from torch import nn

from llm_modules.peft.base import PeftMethod, forget_peft, switched_off
from llm_modules.peft.targets import (
    as_patterns,
    match_modules,
    refuse_shared,
    set_submodule,
)
from llm_modules.registry import PEFT_METHODS, ConfigError

INITS = ("kaiming", "gaussian")


class LoRALinear(nn.Linear):
    """``base(x) + scale * dropout(x) @ A^T @ B^T``, with the base layer's own Parameters."""

    def __init__(self, base: nn.Linear, r: int, scale: float, dropout: float = 0.0, init: str = "kaiming"):
        nn.Module.__init__(self)  # not nn.Linear.__init__: it would allocate a fresh weight
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.register_parameter("bias", base.bias)
        self.r, self.scale = r, scale
        factory = {"device": base.weight.device, "dtype": base.weight.dtype if base.weight.is_floating_point() else None}
        self.lora_a = nn.Parameter(torch.empty(r, self.in_features, **factory))
        self.lora_b = nn.Parameter(torch.zeros(self.out_features, r, **factory))
        if init == "gaussian":
            nn.init.normal_(self.lora_a, std=1.0 / r)
        else:  # nn.Linear's own init for A, as the LoRA reference code does
            nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False
        self.enabled = True  # False: the base layer alone (peft.adapters_disabled)

    def base_forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_forward(x)
        if self.merged or not self.enabled:
            return out
        h = self.lora_dropout(x).to(self.lora_a.dtype)
        delta = F.linear(F.linear(h, self.lora_a), self.lora_b)
        return out + (self.scale * delta).to(out.dtype)

    def delta_weight(self) -> torch.Tensor:
        return (self.scale * (self.lora_b @ self.lora_a)).to(self.weight.dtype)

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged:
            self.weight.add_(self.delta_weight())
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            self.weight.sub_(self.delta_weight())
            self.merged = False

    def to_linear(self) -> nn.Linear:
        """A plain ``nn.Linear`` holding this layer's (merged) Parameters."""
        self.merge()
        plain = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        plain.weight = self.weight
        plain.bias = self.bias
        return plain

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, r={self.r}, scale={self.scale:.4g}, merged={self.merged}"


@PEFT_METHODS.register("lora")
class LoRA(PeftMethod):
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

    def _targets(self, model: nn.Module) -> list[tuple[str, nn.Linear]]:
        option = f"peft {self.name or 'lora'} targets"
        matched = match_modules(model, self.targets, option)
        done = [name for name, module in matched if isinstance(module, LoRALinear)]
        if done:
            raise ConfigError(f"{option}: {', '.join(done)} already carries LoRA; apply one LoRA method per model")
        refuse_shared(matched, model, option)
        return matched

    def make_layer(self, linear: nn.Linear) -> LoRALinear:
        return self.layer_type(linear, self.r, self.scale, self.dropout, self.init)

    def inject(self, model: nn.Module) -> None:
        for name, linear in self._targets(model):
            set_submodule(model, name, self.make_layer(linear))

    def layers(self, model: nn.Module) -> list[tuple[str, LoRALinear]]:
        return [(n, m) for n, m in model.named_modules() if isinstance(m, self.layer_type)]

    def merge(self, model: nn.Module) -> None:
        for _, layer in self.layers(model):
            layer.merge()

    def unmerge(self, model: nn.Module) -> None:
        for _, layer in self.layers(model):
            layer.unmerge()

    def is_merged(self, model: nn.Module) -> bool:
        return any(layer.merged for _, layer in self.layers(model))

    def disabled(self, model: nn.Module) -> AbstractContextManager[None]:
        """Every LoRA layer computes its base layer alone for the block."""
        if self.is_merged(model):
            raise ConfigError(
                f"peft {self.name or 'lora'}: the update is merged into the weights, so the base function "
                "cannot be computed exactly with it switched off; call unmerge() first (or use a frozen copy "
                "of the base as the reference)"
            )
        return switched_off(layer for _, layer in self.layers(model))

    def unload(self, model: nn.Module) -> None:
        """Merge and put plain ``nn.Linear`` layers back (same Parameters): the base state-dict layout."""
        for name, layer in self.layers(model):
            set_submodule(model, name, layer.to_linear())
        forget_peft(model, self)
