"""Hugging Face interop: load HF checkpoints as llm-modules LMs, and export back.

Each supported family (LLaMA, GPT-2, BLOOM, T5, BERT) is a small module that maps configs and
weight names both ways; they register in ``HF_FAMILIES`` under their ``model_type``. Export picks
the family by the model's structure (not by a name), and says why each family does not fit when
none does.
"""

from __future__ import annotations

import json
from pathlib import Path

# Importing the family modules registers them.
from llm_modules.interop import bert, bloom, gpt2, llama, t5  # noqa: E402,F401
from llm_modules.interop.family import HF_FAMILIES, HFFamily
from llm_modules.interop.hf_io import (
    read_hf_config,
    read_hf_weights,
    write_hf_checkpoint,
)
from llm_modules.interop.tokenizer_files import generation_config, special_token_ids, tokenizer_files
from llm_modules.models import LanguageModel, MaskedLM
from llm_modules.registry import ConfigError


def from_hf(path: str | Path) -> LanguageModel:
    """Load a Hugging Face checkpoint directory (config.json + safetensors or .bin) as a LightningModule."""
    hf_config = read_hf_config(path)
    model_type = hf_config.get("model_type")
    if model_type not in HF_FAMILIES:
        raise ConfigError(
            f"{path}/config.json: model_type {model_type!r} is not supported; "
            f"supported: {', '.join(HF_FAMILIES.names())}"
        )
    family: HFFamily = HF_FAMILIES.get(model_type).factory()
    weights = read_hf_weights(path)
    config = family.refine_config(family.config_from_hf(hf_config), weights)
    config = config.replace(**special_tokens_from_hf(hf_config, config.vocab_size))
    module = family.kind(config)
    state = family.weights_from_hf(weights, config)
    missing, unexpected = module.model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ConfigError(
            f"{path}: the checkpoint does not match its config.json "
            f"(missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]})"
        )
    module.eval()
    return module


def special_tokens_from_hf(hf_config: dict, vocab_size: int) -> dict[str, int | None]:
    """BOS/EOS ids from config.json, where generation starts and stops by default. A list of EOS
    ids (LLaMA 3) keeps its first; ids outside the vocabulary are dropped."""
    found = {}
    for name in ("bos_token_id", "eos_token_id"):
        value = hf_config.get(name)
        if isinstance(value, list):
            value = value[0] if value else None
        found[name] = value if isinstance(value, int) and 0 <= value < vocab_size else None
    return found


def to_hf(module: LanguageModel, path: str | Path, family: str | None = None, prune: bool = False) -> Path:
    """Write ``config.json`` + ``model.safetensors`` that transformers' Auto classes load, the
    model's tokenizer when it carries one (``tokenizer.model`` + ``tokenizer_config.json``, which
    ``AutoTokenizer`` loads) and, for models that generate, ``generation_config.json``.

    ``family`` forces a model_type; by default the one family that can represent the model exactly.
    Files of the same names in ``path`` are replaced; ``prune`` also removes an older model's other
    weight, config and tokenizer files (``hf_io.write_hf_checkpoint``).
    """
    config = module.config
    if family is not None:
        chosen = HF_FAMILIES.get(family).factory()
        problems = chosen.mismatches(config, type(module))
        if problems:
            raise ConfigError(f"cannot export as {family}: " + "; ".join(problems))
    else:
        fits, reasons = [], []
        for entry in HF_FAMILIES.entries():
            candidate = entry.factory()
            problems = candidate.mismatches(config, type(module))
            (fits.append(candidate) if not problems else reasons.append(f"{entry.name}: {'; '.join(problems)}"))
        if not fits:
            raise ConfigError(
                "no Hugging Face family can represent this model exactly:\n  " + "\n  ".join(reasons)
            )
        chosen = fits[0]
    hf_config = chosen.config_to_hf(config)
    hf_config.update(special_token_ids(module))
    weights = chosen.weights_to_hf(module.model.state_dict(), config)
    files = tokenizer_files(module)
    if not isinstance(module, MaskedLM):  # transformers keeps generation defaults there
        files["generation_config.json"] = (json.dumps(generation_config(hf_config), indent=2, sort_keys=True)
                                           + "\n").encode()
    return write_hf_checkpoint(path, hf_config, weights, files, prune=prune)


__all__ = ["from_hf", "to_hf", "HF_FAMILIES", "HFFamily"]
