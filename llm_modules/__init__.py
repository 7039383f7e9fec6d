"""llm-modules: a registry-driven Lightning trainer for transformer language models."""

from llm_modules.config import ModelConfig
from llm_modules.models import CausalLM, LanguageModel, MaskedLM, PrefixLM, Seq2SeqLM
from llm_modules.registry import (
    ACTIVATIONS,
    ATTENTIONS,
    MODEL_REGISTRIES,
    NORMS,
    PEFT_METHODS,
    POSITIONS,
    REGISTRIES,
    RESIDUALS,
    ConfigError,
    Registry,
    load_plugins,
)

__version__ = "0.1.0"

#: alignment modules reachable as ``llm_modules.NAME`` (and as ``class_path: llm_modules.NAME``),
#: imported on first use: ``import llm_modules`` stays as light as before
_ALIGNMENT = ("RewardModel", "DPO")


def __getattr__(name):
    if name in _ALIGNMENT:
        from llm_modules import alignment

        return getattr(alignment, name)
    raise AttributeError(f"module 'llm_modules' has no attribute {name!r}")


def from_hf(path, **kwargs):
    """Load a Hugging Face checkpoint directory as the matching LightningModule (see llm_modules.interop)."""
    from llm_modules.interop import from_hf as _from_hf

    return _from_hf(path, **kwargs)


def to_hf(module, path, **kwargs):
    """Write config.json + model.safetensors that transformers' Auto classes load (see llm_modules.interop)."""
    from llm_modules.interop import to_hf as _to_hf

    return _to_hf(module, path, **kwargs)


__all__ = [
    "ModelConfig", "CausalLM", "PrefixLM", "Seq2SeqLM", "MaskedLM", "LanguageModel", "from_hf", "to_hf",
    "RewardModel", "DPO",
    "Registry", "NORMS", "RESIDUALS", "ACTIVATIONS", "POSITIONS", "ATTENTIONS", "PEFT_METHODS",
    "MODEL_REGISTRIES", "REGISTRIES",
    "ConfigError", "load_plugins", "__version__",
]
