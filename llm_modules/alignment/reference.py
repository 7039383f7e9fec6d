"""The frozen reference policy of DPO and PPO, when it has to be a copy.

With a PEFT method the reference is the model itself with the method switched off
(``peft.adapters_disabled``): no copy. Without one it is a frozen deep copy of the policy as
training starts. The copy is held as a plain attribute, not a submodule, so no state dict,
optimizer, strategy or checkpoint sees it; a loaded checkpoint rebuilds it from the base it
recorded (``init_from``).
"""

from __future__ import annotations

import copy

from torch import nn

import llm_modules.models.finetuning as finetune

_REFERENCE = "_reference"


def frozen_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` that never trains: eval mode, no gradients."""
    return copy.deepcopy(model).eval().requires_grad_(False)


class FrozenReference:
    """Mixin for a LanguageModel that keeps a frozen reference copy beside its trained model."""

    @property
    def reference_model(self) -> nn.Module | None:
        """The frozen copy, or None when the reference is the model with its PEFT method switched off."""
        return self.__dict__.get(_REFERENCE)

    def keep_reference(self, model: nn.Module) -> None:
        """Hold a frozen copy of ``model``, on the trained model's device and dtype."""
        like = self.model.embed.tokens.weight
        self.__dict__[_REFERENCE] = frozen_copy(model).to(device=like.device, dtype=like.dtype)

    def rebuild_reference(self, base: str) -> None:
        """The reference as training started: the base a checkpoint recorded, read again."""
        reference = self.build_model(self.config)
        finetune.load_base(reference, finetune.read_base(base, self.base_kind, self.base_kind_fix))
        self.keep_reference(reference)

    def _apply(self, fn, recurse: bool = True):
        """Device and dtype moves (``.to``, precision plugins) reach the reference copy too."""
        super()._apply(fn, recurse)
        if self.reference_model is not None:
            self.reference_model._apply(fn, recurse)
        return self
