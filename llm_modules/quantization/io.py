"""Quantized checkpoint files: the float checkpoint's plain data, the quantized tensors, and the method.

The file is a regular llm-modules checkpoint (``model_config``, ``model_kind``, ``hyper_parameters``,
the tokenizer) whose ``state_dict`` holds the quantized layers' integers and scales (int8, or int4
packed two per byte with float16 scales) instead of float weights, plus a ``quantization`` entry:
``{"method": ..., "options": {...}, "layers": [names of the replaced linear layers], "version": 1}``.
Plain data and tensors only, so ``torch.load(weights_only=True)`` reads it; written atomically.

Loading rebuilds the float module from its config, swaps the listed layers for empty quantized
ones of the method, and fills them from the file: the result is the same LanguageModel class, with
the same logits as the quantized model that was saved.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from llm_modules.quantization.methods import build_method, replace_linears
from llm_modules.registry import ConfigError

FORMAT_VERSION = 1


def is_quantized(checkpoint: dict[str, Any]) -> bool:
    """Whether a checkpoint dict was written by :func:`save_quantized`."""
    return isinstance(checkpoint.get("quantization"), dict)


def save_quantized(module, path: str | os.PathLike) -> Path:
    """Write a quantized LanguageModel (from :func:`quantize`) to ``path`` atomically."""
    from llm_modules.checkpoint import checkpoint_dict
    from llm_modules.training.checkpoint_io import atomic_torch_save

    info = getattr(module, "quantization", None)
    if not info:
        raise ConfigError("save_quantized: the model is not quantized; call llm_modules.quantization.quantize "
                          "first, or save a float model with llm_modules.checkpoint.save_checkpoint")
    checkpoint = checkpoint_dict(module)
    checkpoint["quantization"] = {**info, "version": FORMAT_VERSION}
    return atomic_torch_save(checkpoint, path)


def load_quantized(path: str | os.PathLike, map_location: str | torch.device = "cpu"):
    """Rebuild the quantized LanguageModel saved in ``path``, in eval mode."""
    from llm_modules.checkpoint import _read

    path = Path(path)
    checkpoint = _read(path, map_location)
    if not is_quantized(checkpoint):
        raise ConfigError(f"checkpoint {str(path)!r} is not quantized; load it with llm_modules.checkpoint."
                          "load_checkpoint, or quantize it: llm-modules quantize CKPT OUT --method int8-weight")
    return module_from_checkpoint(checkpoint, path)


def module_from_checkpoint(checkpoint: dict[str, Any], path: str | os.PathLike):
    """The quantized module of an already read quantized checkpoint dict (``path`` names it in errors)."""
    info = checkpoint["quantization"]
    where = f"checkpoint {str(path)!r}"
    version = info.get("version", FORMAT_VERSION)
    if version > FORMAT_VERSION:
        raise ConfigError(f"{where} uses quantized format version {version}; this llm-modules reads up to "
                          f"{FORMAT_VERSION}: upgrade llm-modules")
    from llm_modules.checkpoint import build_module, restore

    method = build_method(info["method"], **dict(info.get("options") or {}))
    module = build_module(checkpoint, path)
    layers = list(info.get("layers") or [])
    replace_linears(module.model, layers, method.empty_linear)
    restore(module, checkpoint, where, "model_config and quantization")
    module.quantization = {"method": method.name, "options": method.options(), "layers": layers}
    return module


def linear_bytes(module) -> tuple[int, int]:
    """``(stored, float32)`` bytes of the quantized layers' weights: what the method shrank, scales and
    offsets included (biases, embeddings, norms and layers left float are not counted)."""
    from llm_modules.quantization.linear import LINEAR_TYPES

    stored = as_float = 0
    for layer in module.model.modules():
        if isinstance(layer, LINEAR_TYPES):
            stored += sum(b.numel() * b.element_size() for b in layer.buffers(recurse=False))
            as_float += layer.in_features * layer.out_features * 4
    return stored, as_float
