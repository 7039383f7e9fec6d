"""The part every Linear-wrapping PEFT method shares: wrap, merge, unmerge, unload, switch off.

LoRA, QLoRA and any later method of the same kind (DoRA, VeRA, IA3 ...) replace each targeted
``nn.Linear`` by a layer that computes ``base(x) + delta(x)``. Everything around that sum is the
same for all of them and lives here once:

- ``WrappedLinear`` holds the base layer's *own* weight and bias Parameters, so base names
  (``stack.layers.0.attn.q.weight``) and a base checkpoint still fit, and the method's tensors are
  the only new state-dict keys. It folds the method into the weight (``merge``: inference at base
  cost) when the method can write its delta as a weight (``delta_weight``), takes it out again
  (``unmerge``), turns back into a plain ``nn.Linear`` holding the same Parameters (``to_linear``),
  and computes the base layer alone while ``enabled`` is False (``peft.adapters_disabled``).
- ``LinearWrappingMethod`` finds the targeted linears (``targets`` patterns), refuses tied or
  already-wrapped layers, swaps each for the method's layer (``make_layer``), and applies merge /
  unmerge / disable / unload to every layer of its type.

A method subclass keeps only its own math: its parameters and ``delta`` (and ``delta_weight`` if
it merges); a layer whose weight cannot take the delta (4-bit storage) sets ``merge_refusal``.
"""

from __future__ import annotations

import abc
from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import nn

from llm_modules.nn import linear as linear_layer
from llm_modules.peft.base import PeftMethod, forget_peft, switched_off
from llm_modules.peft.targets import match_modules, refuse_shared, set_submodule
from llm_modules.registry import ConfigError


class WrappedLinear(nn.Linear, abc.ABC):
    """``base(x) + delta(x)`` around a base ``nn.Linear``'s own Parameters (an ``nn.Linear`` itself,
    so code that asks for the in/out features or the weight keeps working)."""

    #: why this layer cannot merge (None: it can); the ConfigError names the way out
    merge_refusal: str | None = None

    def __init__(self, base: nn.Linear):
        nn.Module.__init__(self)  # not nn.Linear.__init__: it would allocate a fresh weight
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.register_parameter("bias", base.bias)
        self.merged = False
        self.enabled = True  # False: the base layer alone (peft.adapters_disabled)

    def new_tensor_options(self) -> dict[str, Any]:
        """Device and dtype for the method's own parameters: those of the base weight (a float
        dtype only: an integer base weight leaves the dtype to torch's default)."""
        weight = self.weight
        return {"device": weight.device, "dtype": weight.dtype if weight.is_floating_point() else None}

    def base_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The base layer's output (a quantized base overrides this)."""
        return linear_layer.linear(x, self.weight, self.bias)

    @abc.abstractmethod
    def delta(self, x: torch.Tensor) -> torch.Tensor:
        """The method's contribution to the output for input ``x`` (cast to the output dtype here)."""

    def delta_weight(self) -> torch.Tensor:
        """The delta as an (out, in) weight in the base dtype, for ``merge``; methods whose delta is
        not linear in ``x`` cannot merge and keep this refusal."""
        raise ConfigError(f"{type(self).__name__} cannot be merged into the base weight; keep it unmerged")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_forward(x)
        if self.merged or not self.enabled:
            return out
        return out + self.delta(x).to(out.dtype)

    @torch.no_grad()
    def merge(self) -> None:
        if self.merge_refusal is not None:
            raise ConfigError(self.merge_refusal)
        if not self.merged:
            self.weight.add_(self.delta_weight())
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            self.weight.sub_(self.delta_weight())
            self.merged = False

    def to_linear(self) -> nn.Linear:
        """A plain linear layer (the model's own ``nn.linear.Linear``) holding this layer's (merged)
        Parameters."""
        self.merge()
        plain = linear_layer.Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        plain.weight = self.weight
        plain.bias = self.bias
        return plain

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, merged={self.merged}"


class LinearWrappingMethod(PeftMethod):
    """A PEFT method that wraps the linear layers its ``targets`` patterns name."""

    #: the layer class this method puts in place (its layers are found by this type)
    layer_type: type[WrappedLinear] = WrappedLinear
    #: shell-style patterns over linear-layer names, set by the subclass's constructor
    targets: list[str]

    @abc.abstractmethod
    def make_layer(self, linear: nn.Linear) -> WrappedLinear:
        """This method's layer around ``linear``."""

    def _targets(self, model: nn.Module) -> list[tuple[str, nn.Linear]]:
        option = f"peft {self.name or type(self).__name__.lower()} targets"
        matched = match_modules(model, self.targets, option)
        done = [f"{name} already carries {type(module).__name__.removesuffix('Linear')}"
                for name, module in matched if isinstance(module, WrappedLinear)]
        if done:
            raise ConfigError(f"{option}: {', '.join(done)}; wrap each linear layer with one method per model")
        refuse_shared(matched, model, option)
        return matched

    def inject(self, model: nn.Module) -> None:
        for name, linear in self._targets(model):
            set_submodule(model, name, self.make_layer(linear))

    def layers(self, model: nn.Module) -> list[tuple[str, WrappedLinear]]:
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
        """Every wrapped layer computes its base layer alone for the block."""
        if self.is_merged(model):
            raise ConfigError(
                f"peft {self.name or type(self).__name__.lower()}: the update is merged into the weights, so the "
                "base function cannot be computed exactly with it switched off; call unmerge() first (or use a "
                "frozen copy of the base as the reference)"
            )
        return switched_off(layer for _, layer in self.layers(model))

    def unload(self, model: nn.Module) -> None:
        """Merge and put plain ``nn.Linear`` layers back (same Parameters): the base state-dict layout."""
        for name, layer in self.layers(model):
            set_submodule(model, name, layer.to_linear())
        forget_peft(model, self)
