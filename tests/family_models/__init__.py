"""Tiny random transformers models, one module per Hugging Face family, for the checks every family
must pass (``tests/parity/test_families.py``, ``tests/integration/test_family_finetune.py``).

A family module defines:

- ``MODEL_TYPE``: the config.json ``model_type``;
- ``build(vocab_size) -> transformers.PreTrainedModel``: a tiny model of the family with random
  weights (``hf_helpers.randomize_``), in eval mode, exercising what the family has that others
  lack (biases, windows, norms ...); two layers, hidden size 64 or so;
- ``PUBLISHED``: {our preset name: the published model's config.json values} (``model_type``
  included), whose parameter counts must be equal (built on the meta device by both sides).

Adding a family's module here is all it takes to put it through those checks.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType


def family_modules() -> dict[str, ModuleType]:
    """Every family module of this package, by module name."""
    found = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if not info.name.startswith("_"):
            found[info.name] = importlib.import_module(f"{__name__}.{info.name}")
    return found
