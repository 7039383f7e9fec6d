"""Bottleneck adapters (Houlsby et al., 2019; parallel form: He et al., 2022).

A small ``up(act(down(h)))`` module beside each chosen sublayer of every block:

- ``serial``: applied to the sublayer's output before it joins the residual stream,
  ``out + adapter(out)``;
- ``parallel``: fed the sublayer's input and added to its output, ``out + adapter(in)``.

``up`` starts at zero, so the adapted model starts as exactly the base model. The adapter lives
as a child of the sublayer (``stack.layers.0.attn.adapter.down.weight``) and runs from a forward
hook, so no base module is replaced or renamed and the base state-dict keys stay as they are.
The hook holds no reference to the adapter (it looks it up on the module it is called for), so a
deep-copied model (a frozen reference policy, an EMA copy) runs its own adapters. Adapters add
a non-linearity, so they cannot be merged into the weights. ``disabled`` (``peft.adapters_disabled``)
clears each adapter's ``enabled`` flag, and the hook then passes the sublayer's output through.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import AbstractContextManager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from llm_modules.peft.base import PeftMethod, switched_off
from llm_modules.registry import PEFT_METHODS, ConfigError

ACTIVATIONS = {
    "relu": F.relu,
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "silu": F.silu,
    "swish": F.silu,
    "tanh": torch.tanh,
}
PLACEMENTS = ("serial", "parallel")
#: the sublayers of ``nn.transformer.Block`` an adapter can follow (cross_attn: decoders of encoder-decoders)
SUBLAYERS = ("attn", "cross_attn", "ffn")
ATTRIBUTE = "adapter"


class Adapter(nn.Module):
    """``up(act(down(h)))`` with ``up`` zero-initialized (the adapter starts as the zero function)."""

    def __init__(self, d_model: int, bottleneck: int, activation: str, *, device=None, dtype=None):
        super().__init__()
        self.down = nn.Linear(d_model, bottleneck, device=device, dtype=dtype)
        self.up = nn.Linear(bottleneck, d_model, device=device, dtype=dtype)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        self.activation = activation
        self.enabled = True  # False: the hook passes the sublayer's output through (peft.adapters_disabled)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.up(ACTIVATIONS[self.activation](self.down(h.to(self.down.weight.dtype)))).to(h.dtype)

    def extra_repr(self) -> str:
        return f"activation={self.activation}"


class AdapterHook:
    """Forward hook adding the module's ``adapter`` to its output (serial or parallel)."""

    def __init__(self, placement: str):
        self.placement = placement

    def __call__(self, module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
        adapter = getattr(module, ATTRIBUTE)
        if not adapter.enabled:
            return output
        source = output if self.placement == "serial" else args[0]
        return output + adapter(source)


def _model_width(module: nn.Module) -> tuple[int, torch.Tensor]:
    """The residual width a sublayer reads and writes, and a parameter for device/dtype."""
    weight = next(p for p in module.parameters() if p.is_floating_point())
    for linear in module.modules():
        if isinstance(linear, nn.Linear):
            return linear.in_features, weight
    raise ConfigError(f"peft adapter: cannot tell the width of {type(module).__name__} (no linear layer)")


@PEFT_METHODS.register("adapter")
class BottleneckAdapter(PeftMethod):
    """Bottleneck adapters after attention and/or feed-forward sublayers (Houlsby; parallel: He et al.).

    ``bottleneck``: hidden size; ``placement``: ``serial`` (on the sublayer output) or ``parallel``
    (on its input, added to the output); ``activation``: relu, gelu, gelu_tanh, silu, tanh;
    ``where``: sublayers to adapt among attn, cross_attn (decoder of an encoder-decoder), ffn.
    """

    def __init__(
        self,
        bottleneck: int = 64,
        placement: str = "serial",
        activation: str = "relu",
        where: str | Iterable[str] = ("attn", "cross_attn", "ffn"),
    ):
        if isinstance(bottleneck, bool) or not isinstance(bottleneck, int) or bottleneck < 1:
            raise ConfigError(f"peft adapter bottleneck must be a positive integer; got {bottleneck!r}")
        if placement not in PLACEMENTS:
            raise ConfigError(f"peft adapter placement must be one of {', '.join(PLACEMENTS)}; got {placement!r}")
        if activation not in ACTIVATIONS:
            raise ConfigError(f"peft adapter activation must be one of {', '.join(ACTIVATIONS)}; got {activation!r}")
        where = [where] if isinstance(where, str) else list(where)
        unknown = [w for w in where if w not in SUBLAYERS]
        if not where or unknown:
            raise ConfigError(f"peft adapter where: choose among {', '.join(SUBLAYERS)}; got {where!r}")
        self.bottleneck, self.placement, self.activation, self.where = bottleneck, placement, activation, where

    def _sublayers(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        from llm_modules.nn.transformer import Block

        found = []
        for name, block in model.named_modules():
            if isinstance(block, Block):
                for attr in self.where:
                    sub = getattr(block, attr, None)
                    if sub is not None:
                        found.append((f"{name}.{attr}", sub))
        if not found:
            raise ConfigError(
                f"peft adapter where={self.where!r}: the model has no such sublayer in any transformer block"
            )
        return found

    def inject(self, model: nn.Module) -> None:
        sublayers = self._sublayers(model)
        taken = [name for name, sub in sublayers if hasattr(sub, ATTRIBUTE)]
        if taken:
            raise ConfigError(f"peft adapter: {', '.join(taken)} already has an adapter; apply adapters once")
        for _, sub in sublayers:
            width, like = _model_width(sub)
            adapter = Adapter(width, self.bottleneck, self.activation, device=like.device, dtype=like.dtype)
            sub.add_module(ATTRIBUTE, adapter)
            sub.register_forward_hook(AdapterHook(self.placement))

    def disabled(self, model: nn.Module) -> AbstractContextManager[None]:
        """Every adapter passes its sublayer's output through for the block."""
        return switched_off(m for m in model.modules() if isinstance(m, Adapter))
