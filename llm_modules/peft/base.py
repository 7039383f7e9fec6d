"""What every parameter-efficient fine-tuning (PEFT) method provides, and how one is applied.

A method is a registered class (``@PEFT_METHODS.register("lora")``) whose constructor keywords are
its options, so a config names it like a model component: ``peft: {name: lora, r: 8, alpha: 16}``.
It works on the torch model of any LM kind (``nn.lm``), in place, without Lightning:

- ``apply_peft(model, spec)`` freezes every base parameter, lets the method add its own modules
  (``PeftMethod.inject``), and records the state-dict keys that appeared. Those keys are the
  method's state: what an adapter-only file holds and the only parameters that train.
- Base parameters keep their names, so a base checkpoint still loads into the adapted model and
  the adapted model's state dict still maps onto Hugging Face names once merged.
- ``merge`` folds the method into plain weights where the method allows it (LoRA; prefix tuning
  folds its reparameterization); ``unmerge`` undoes that while the method's modules remain.
  ``unload`` merges for good and removes the method's modules, leaving the base layout (export).
- The model remembers what was applied to it (``applied_peft``), so an adapter file can tell
  whether to add its method or to load into the one already there (``peft.io``).
- ``adapters_disabled(model)`` switches every applied method off for a ``with`` block, so the same
  model computes the base function. Alignment needs the base as its frozen reference (DPO, the KL
  penalty of PPO); switching the method off gives it without a second copy of the weights.
"""

from __future__ import annotations

import abc
import inspect
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from typing import Any

from torch import nn

from llm_modules.registry import PEFT_METHODS, ConfigError

_APPLIED = "_peft_methods"


class PeftMethod(abc.ABC):
    """One fine-tuning method, built from its config options (the constructor's keywords)."""

    #: the registry name, set by ``apply_peft`` (messages, adapter files)
    name: str = ""
    #: state-dict keys this method added to the model, set by ``apply_peft``
    added_keys: frozenset[str] = frozenset()

    @abc.abstractmethod
    def inject(self, model: nn.Module) -> None:
        """Add this method's trainable modules to ``model`` (whose base parameters are already
        frozen). New parameters must require gradients; base parameter names must not change."""

    def merge(self, model: nn.Module) -> None:
        """Fold the method into the model so that it runs without the method's extra compute.
        Methods that cannot be folded (adapters, soft prompts) say so."""
        raise ConfigError(f"peft method {self.name!r} cannot be merged into the base weights; keep it unmerged")

    def unmerge(self, model: nn.Module) -> None:
        """Undo ``merge`` (the method's modules are still there)."""
        raise ConfigError(f"peft method {self.name!r} cannot be merged, so there is nothing to unmerge")

    def unload(self, model: nn.Module) -> None:
        """Merge for good and remove the method's modules: the model is the base layout again."""
        raise ConfigError(f"peft method {self.name!r} cannot be merged into the base weights, so it cannot be unloaded")

    def is_merged(self, model: nn.Module) -> bool:
        """Whether the method's delta currently lives in the base weights (loading new method
        tensors then would leave the old delta behind)."""
        return False

    def disabled(self, model: nn.Module) -> AbstractContextManager[None]:
        """A context in which ``model`` computes exactly the base function: the method's modules
        stay in place (no copies, nothing changes in the state dict) but contribute nothing.
        Methods that cannot be switched off say so."""
        raise ConfigError(
            f"peft method {self.name!r} cannot be switched off (no disabled() hook); keep a frozen copy of the "
            "base model as the reference instead"
        )

    def describe(self) -> dict[str, Any]:
        """The options as plain data, as they would be written in a config."""
        return {"name": self.name, **{k: v for k, v in vars(self).items() if not k.startswith("_") and k not in ("name", "added_keys")}}


def option_names(method_type: type[PeftMethod]) -> list[str]:
    """The config options of a method class (its constructor's keywords), in signature order."""
    return [p.name for p in inspect.signature(method_type).parameters.values() if p.kind is not p.VAR_KEYWORD]


def extended_signature(parent_init: Callable, own_init: Callable) -> inspect.Signature:
    """``own_init``'s signature with its ``**options`` replaced by ``parent_init``'s options.

    A method that adds options to another's (QLoRA: LoRA's and quantization's) takes the parent's
    as ``**options`` and passes them on, so each option is written once; assigned to
    ``__init__.__signature__``, this lets the registry's typo check and help still list them all.
    Every option is keyword-only, as ``**options`` can only be filled by keyword.
    """
    own = list(inspect.signature(own_init).parameters.values())
    inherited = [p.replace(kind=p.KEYWORD_ONLY) for p in list(inspect.signature(parent_init).parameters.values())[1:]
                 if p.kind is not p.VAR_KEYWORD]
    mine = [p for p in own[1:] if p.kind is not p.VAR_KEYWORD]
    return inspect.Signature([own[0], *inherited, *mine])


def build_peft(spec: Any) -> PeftMethod:
    """A method from its config value (a name or ``{name: ..., **options}``)."""
    method = PEFT_METHODS.build(spec)
    if not isinstance(method, PeftMethod):
        raise ConfigError(f"peft {spec!r} built a {type(method).__name__}, not a PeftMethod")
    method.name = PEFT_METHODS.validate(spec)[0].name
    return method


def apply_peft(model: nn.Module, spec: Any) -> PeftMethod:
    """Freeze ``model`` and add the method named by ``spec``; returns the method with ``added_keys``."""
    method = spec if isinstance(spec, PeftMethod) else build_peft(spec)
    if not method.name:  # built directly (LoRA(r=4)): the registry name, so adapter files can rebuild it
        method.name = next((e.name for e in PEFT_METHODS.entries() if e.factory is type(method)), "")
    before = set(model.state_dict().keys())
    trainable = [p for p in model.parameters() if p.requires_grad]
    model.requires_grad_(False)
    try:
        method.inject(model)
    except BaseException:
        # A refused method (bad targets, no GPU for qlora) leaves the model as it was, not frozen.
        for p in trainable:
            p.requires_grad_(True)
        raise
    method.added_keys = frozenset(set(model.state_dict().keys()) - before)
    if not method.added_keys:
        raise ConfigError(f"peft method {method.name!r} added nothing to the model; check its target options")
    # A plain attribute (not a module): it is copied with the model and never enters the state dict.
    model.__dict__[_APPLIED] = (*applied_peft(model), method)
    return method


def applied_peft(model: nn.Module) -> tuple[PeftMethod, ...]:
    """The methods ``apply_peft`` added to ``model``, oldest first."""
    return model.__dict__.get(_APPLIED, ())


def forget_peft(model: nn.Module, method: PeftMethod) -> None:
    """Drop ``method`` from the model's record (after ``unload`` removed its modules)."""
    model.__dict__[_APPLIED] = tuple(m for m in applied_peft(model) if m is not method)


def peft_state_dict(model: nn.Module, method: PeftMethod) -> dict[str, Any]:
    """The method's tensors only (what an adapter-only checkpoint holds)."""
    return {k: v for k, v in model.state_dict().items() if k in method.added_keys}


@contextmanager
def switched_off(parts: Iterable[Any]) -> Iterator[None]:
    """Set ``enabled = False`` on each of ``parts`` (modules that check that flag in their forward)
    for the block, then put back what each had, so nested and failing blocks restore correctly."""
    parts = list(parts)
    before = [part.enabled for part in parts]
    try:
        for part in parts:
            part.enabled = False
        yield
    finally:
        for part, was in zip(parts, before):
            part.enabled = was


def _peft_host(model: nn.Module) -> nn.Module:
    """The torch model the methods were applied to: ``model``, or the one a LanguageModel holds."""
    inner = getattr(model, "model", None)
    if not applied_peft(model) and isinstance(inner, nn.Module):
        return inner
    return model


@contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Inside the block, ``model`` (a torch LM or a LanguageModel) computes its base function:
    every method ``apply_peft`` added is switched off (LoRA adds no delta, adapters pass through,
    prompts and prefixes are left out) and comes back on when the block ends, also on error.

    This is how alignment gets its frozen reference without a second copy of the weights. A model
    with no method applied is its own base, so the block changes nothing. A merged LoRA is refused:
    its delta lives in the weights and cannot be taken out exactly; unmerge it first. Gradients are
    the caller's business (reference passes run under ``torch.no_grad()``).
    """
    host = _peft_host(model)
    with ExitStack() as stack:
        for method in reversed(applied_peft(host)):
            stack.enter_context(method.disabled(host))
        yield model
