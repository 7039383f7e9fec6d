"""Hugging Face folders as LightningModules: ``from_hf`` builds the LM kind that ``interop`` reads,
and ``to_hf`` writes one back.

This module sits above both ``models`` and ``interop``, so that interop never imports the models
it converts (it works on configs, kind names and state dicts).
"""

from __future__ import annotations

from pathlib import Path

from llm_modules.interop import read_hf_model, to_hf
from llm_modules.models import KINDS, LanguageModel
from llm_modules.registry import ConfigError


def from_hf(path: str | Path) -> LanguageModel:
    """Load a Hugging Face checkpoint directory (config.json + safetensors or .bin) as the matching
    LightningModule (CausalLM, Seq2SeqLM, MaskedLM), in eval mode."""
    read = read_hf_model(path)
    module = KINDS[read.kind](read.config)
    missing, unexpected = module.model.load_state_dict(read.state, strict=False)
    if missing or unexpected:
        raise ConfigError(
            f"{path}: the checkpoint does not match its config.json "
            f"(missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]})"
        )
    module.eval()
    return module


__all__ = ["from_hf", "to_hf"]
