"""Quantization methods, picked by name from a registry, and ``quantize`` which applies one to a model.

A method says what replaces each ``nn.Linear`` (``quantize_linear``) and what empty layer a file's
tensors load into (``empty_linear``); its constructor's keyword arguments are its options, checked
by the registry like a model component's (``{name: int4-weight, group_size: 32}``). A plugin adds a
method with ``@METHODS.register("name")`` on a ``Method`` subclass.

Which layers: every ``nn.Linear`` of the torch model (attention projections, feed-forward, the
output head, BERT's head transform), except
- a layer whose weight is shared with another module (the head tied to the embedding): the
  embedding stays float, and quantizing the shared matrix would store it twice;
- a mixture-of-experts ``router``: a few numbers per token that decide where the token goes,
  where a rounding error changes the routing rather than nudging a value.
Embeddings and norms stay float32: an embedding lookup costs nothing to compute and int8 tables
would save disk only; norms are a vector each.
"""

from __future__ import annotations

import abc
from typing import Any, Mapping

from torch import nn

from llm_modules.peft.base import applied_peft
from llm_modules.quantization.linear import DynamicInt8Linear, Int4WeightLinear, Int8WeightLinear
from llm_modules.registry import ConfigError, Registry

METHODS = Registry("quantization method", "post-training quantization of the linear layers for CPU inference")

SKIPPED_NAMES = ("router",)


class Method(abc.ABC):
    """Base of the quantization methods: how an ``nn.Linear`` is replaced, and the options to store."""

    name = ""

    def options(self) -> dict[str, Any]:
        """Keyword arguments that rebuild this method (plain data: they are stored in the file)."""
        return {}

    @abc.abstractmethod
    def quantize_linear(self, linear: nn.Linear) -> nn.Module:
        """The quantized layer replacing a trained ``linear``."""

    @abc.abstractmethod
    def empty_linear(self, linear: nn.Linear) -> nn.Module:
        """A layer of ``linear``'s shapes, for ``load_state_dict`` to fill."""


@METHODS.register("dynamic-int8")
class DynamicInt8(Method):
    """int8 weights per channel, activations quantized per call; integer matmul on CPU (torch's quantized engine)."""

    name = "dynamic-int8"

    def quantize_linear(self, linear):
        return DynamicInt8Linear.from_linear(linear)

    def empty_linear(self, linear):
        return DynamicInt8Linear(linear.in_features, linear.out_features, linear.bias is not None)


@METHODS.register("int8-weight")
class Int8Weight(Method):
    """Weight-only int8, one scale per output channel; float activations and matmul."""

    name = "int8-weight"

    def quantize_linear(self, linear):
        return Int8WeightLinear.from_linear(linear)

    def empty_linear(self, linear):
        return Int8WeightLinear(linear.in_features, linear.out_features, linear.bias is not None)


@METHODS.register("int4-weight")
class Int4Weight(Method):
    """Weight-only int4, float16 scale and offset per group of inputs, two weights per byte."""

    name = "int4-weight"

    def __init__(self, group_size: int = 64):
        if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 2 or group_size % 2:
            raise ConfigError(
                f"int4-weight group_size={group_size!r} must be a positive even number of inputs per scale "
                "(e.g. 32, 64 or 128: smaller is more accurate and larger on disk)"
            )
        self.group_size = group_size

    def options(self):
        return {"group_size": self.group_size}

    def quantize_linear(self, linear):
        return Int4WeightLinear.from_linear(linear, self.group_size)

    def empty_linear(self, linear):
        return Int4WeightLinear(linear.in_features, linear.out_features, linear.bias is not None, self.group_size)


def build_method(method: str | Mapping[str, Any] | Method, **options: Any) -> Method:
    """A method from its name and options, a ``{name: ..., **options}`` mapping, or itself."""
    if isinstance(method, Method):
        return method
    spec = {"name": method, **options} if isinstance(method, str) else {**dict(method), **options}
    entry, _ = METHODS.validate(spec)
    built = METHODS.build(spec)
    built.name = entry.name  # the registered name is what files store
    return built


def quantizable_linears(model: nn.Module) -> list[str]:
    """Names (in ``model``) of the linear layers a method replaces; see the module docstring."""
    owners: dict[int, int] = {}
    for _, param in model.named_parameters(remove_duplicate=False):
        owners[id(param)] = owners.get(id(param), 0) + 1
    return [
        name for name, module in model.named_modules()
        if isinstance(module, nn.Linear)
        and owners.get(id(module.weight), 0) == 1
        and name.rsplit(".", 1)[-1] not in SKIPPED_NAMES
    ]


def replace_linears(model: nn.Module, names: list[str], make) -> None:
    """Put ``make(linear)`` in place of each named ``nn.Linear`` of ``model``."""
    for name in names:
        linear = model.get_submodule(name)
        if not isinstance(linear, nn.Linear):
            raise ConfigError(f"quantization: {name!r} is a {type(linear).__name__}, not a linear layer; "
                              "the file does not match its own config")
        model.set_submodule(name, make(linear))


def quantize(module, method: str | Mapping[str, Any] | Method = "int8-weight", **options: Any):
    """Quantize a LanguageModel's linear layers in place and return it, in eval mode, for inference.

    ``method``: ``dynamic-int8``, ``int8-weight`` or ``int4-weight`` (``group_size=...``), or a
    plugin's. The module keeps its forward and ``generate``; ``module.quantization`` records the
    method, its options and the layers replaced (what ``save_quantized`` writes). Quantized layers
    hold buffers, not parameters: the result is for inference, not for training.
    """
    if getattr(module, "quantization", None):
        raise ConfigError(f"the model is already quantized ({module.quantization['method']}); "
                          "quantize the float model instead")
    applied = applied_peft(module.model)
    if applied:
        # Quantizing would replace LoRA layers by plain quantized ones and silently drop the update.
        raise ConfigError(
            f"the model carries peft method {applied[-1].name!r}; merge it into the weights first "
            "(llm_modules.models.finetuning.fold(module), or: llm-modules export CKPT OUT --format ckpt --merge), "
            "then quantize the merged model"
        )
    chosen = build_method(method, **options)
    names = quantizable_linears(module.model)
    if not names:
        raise ConfigError("quantization: the model has no linear layers to quantize")
    replace_linears(module.model, names, chosen.quantize_linear)
    module.quantization = {"method": chosen.name, "options": chosen.options(), "layers": names}
    return module.eval()
