"""LM objects: one LightningModule base with a small subclass per LM kind, and ``InferenceLM``, the same
models without Lightning (``definition.py`` holds what both are).

The LightningModules are imported on first use (``llm_modules.models.CausalLM``): importing Lightning
costs seconds, which the commands that only load a model (generate, convert, export, quantize) skip.
"""

from __future__ import annotations

import importlib

from llm_modules.kinds import KINDS as _KINDS

IGNORE_INDEX = -100

#: name -> the module of this package that defines it
_LAZY = {"LanguageModel": "base", "InferenceLM": "inference_lm",
         **{kind.class_name: kind.key for kind in _KINDS.values()}}


def import_kinds() -> dict[str, type]:
    """Class name -> LightningModule class, for every kind of the one table (``llm_modules.kinds``),
    importing them: what ``KINDS`` is, and what the training CLI calls first so that LightningCLI,
    which resolves a short class name (``--model CausalLM``) among the subclasses imported so far,
    finds every kind."""
    return {kind.class_name: __getattr__(kind.class_name) for kind in _KINDS.values()}


def __getattr__(name: str):
    if name == "KINDS":
        return import_kinds()
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["IGNORE_INDEX", "LanguageModel", "InferenceLM", "CausalLM", "PrefixLM", "Seq2SeqLM", "MaskedLM", "KINDS",
           "import_kinds"]
