"""Quantized checkpoint files: the float checkpoint's plain data, the quantized tensors, and the method.

What a quantized file is, and the figures of a quantized module; writing and reading one builds
LanguageModels, so ``save_quantized`` and ``load_quantized`` live in ``llm_modules.checkpoint``.

The file is a regular llm-modules checkpoint (``model_kind``, ``hyper_parameters``,
the tokenizer) whose ``state_dict`` holds the quantized layers' integers and scales (int8, or int4
packed two per byte with float16 scales) instead of float weights, plus a ``quantization`` entry:
``{"method": ..., "options": {...}, "layers": [names of the replaced linear layers], "version": 1}``.
Plain data and tensors only, so ``torch.load(weights_only=True)`` reads it; written atomically.

Loading rebuilds the float module from its config, swaps the listed layers for empty quantized
ones of the method, and fills them from the file: the result is the same LanguageModel class, with
the same logits as the quantized model that was saved.
"""

from __future__ import annotations

from typing import Any

FORMAT_VERSION = 1


def is_quantized(checkpoint: dict[str, Any]) -> bool:
    """Whether a checkpoint dict was written by :func:`save_quantized`."""
    return isinstance(checkpoint.get("quantization"), dict)


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
