"""llm-modules: a registry-driven Lightning trainer for transformer language models."""

from llm_modules.config import ModelConfig
from llm_modules.registry import ConfigError, Registry, load_plugins
from llm_modules.version import __version__

#: names reachable as ``llm_modules.NAME`` (and as ``class_path: llm_modules.NAME``), imported on first
#: use: the LightningModules pull in Lightning (seconds of import), which commands such as ``data
#: prepare`` and ``estimate`` never need
_MODELS = ("LanguageModel", "CausalLM", "PrefixLM", "Seq2SeqLM", "MaskedLM")
_ALIGNMENT = ("RewardModel", "DPO")
#: the registries, served with their built-ins: ``llm_modules.registry`` holds them but imports no
#: component, the packages that define built-ins (nn, peft) register them when imported
_REGISTRIES = ("ACTIVATIONS", "ATTENTIONS", "MODEL_REGISTRIES", "NORMS", "PEFT_METHODS", "POSITIONS", "REGISTRIES",
               "RESIDUALS")


def __getattr__(name):
    if name in _REGISTRIES:
        import llm_modules.nn  # noqa: F401
        import llm_modules.peft  # noqa: F401
        import llm_modules.registry as registry

        return getattr(registry, name)
    if name in _MODELS:
        import llm_modules.models as models

        return getattr(models, name)
    if name in _ALIGNMENT:
        import llm_modules.alignment as alignment

        return getattr(alignment, name)
    raise AttributeError(f"module 'llm_modules' has no attribute {name!r}")


def from_hf(path, **kwargs):
    """Load a Hugging Face checkpoint directory as the matching LightningModule (see llm_modules.hf)."""
    from llm_modules.hf import from_hf as _from_hf

    return _from_hf(path, **kwargs)


def to_hf(module, path, **kwargs):
    """Write config.json + model.safetensors that transformers' Auto classes load (see llm_modules.hf)."""
    from llm_modules.hf import to_hf as _to_hf

    return _to_hf(module, path, **kwargs)


__all__ = [
    "ModelConfig", "CausalLM", "PrefixLM", "Seq2SeqLM", "MaskedLM", "LanguageModel", "from_hf", "to_hf",
    "RewardModel", "DPO",
    "Registry", "NORMS", "RESIDUALS", "ACTIVATIONS", "POSITIONS", "ATTENTIONS", "PEFT_METHODS",
    "MODEL_REGISTRIES", "REGISTRIES",
    "ConfigError", "load_plugins", "__version__",
]
