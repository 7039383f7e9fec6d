"""Hugging Face interop: read HF checkpoint folders as plain data, and write models back.

Each supported family (by ``model_type``: llama, mistral, qwen2, gemma2, gpt2, t5, ...) is a small
module that declares what it can represent (``FIELDS``, an allow-list over every ModelConfig field:
``allow``), maps config.json both ways, and lays out its weights as a table (``weights``); they
register in ``HF_FAMILIES`` under their ``model_type``. Export picks the family by the model's
structure (not by a name; where several fit, the first in the import order below), and says why
each family does not fit when none does.

This package sits below ``models``: it reads and writes configs, kind names and state dicts, and
never builds a LightningModule. ``llm_modules.hf.from_hf`` builds one from ``read_hf_model``;
``to_hf`` takes a module duck-typed (``.config``, ``.model``, ``.tokenizer``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Importing the family modules registers them.
from llm_modules.interop import (  # noqa: E402,F401
    bert, bloom, falcon, gemma, gemma2, gemma3_text, gpt2, gpt_neox, llama, mistral, mixtral, olmo2, opt, phi3,
    qwen2, qwen2_moe, qwen3, qwen3_moe,
    t5,
)
from llm_modules.config import ModelConfig
from llm_modules.interop import dtypes
from llm_modules.interop.family import HF_FAMILIES, HFFamily
from llm_modules.interop.hf_io import (
    read_hf_config,
    read_hf_weights,
    write_hf_checkpoint,
)
from llm_modules.interop.shards import DEFAULT_MAX_SHARD_SIZE
from llm_modules.interop.tokenizer_files import generation_config, special_token_ids, tokenizer_files
from llm_modules.interop.weights import StateDict
from llm_modules.registry import ConfigError


@dataclass
class HFModel:
    """A Hugging Face folder read as our terms: the LM kind to build (a name in ``models.KINDS``),
    its config, the state dict of its torch model (``module.model``), and the folder's
    SentencePiece ``tokenizer.model`` bytes when it has one."""

    kind: str
    config: ModelConfig
    state: StateDict
    tokenizer: bytes | None = None


def read_hf_model(path: str | Path) -> HFModel:
    """Read a Hugging Face checkpoint folder (config.json + safetensors or .bin) as plain data; what a
    family cannot represent is a ConfigError naming it. Builds no model."""
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
    sentencepiece = Path(path) / "tokenizer.model"
    tokenizer = sentencepiece.read_bytes() if sentencepiece.is_file() else None
    return HFModel(family.kind, config, family.weights_from_hf(weights, config), tokenizer)


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


def to_hf(module: Any, path: str | Path, family: str | None = None, prune: bool = False,
          dtype: str | None = None, max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE) -> Path:
    """Write ``config.json`` + ``model.safetensors`` that transformers' Auto classes load, the
    model's tokenizer when it carries one (``tokenizer.model`` + ``tokenizer_config.json``, which
    ``AutoTokenizer`` loads) and, for models that generate, ``generation_config.json``.

    ``module``: a LanguageModel, or anything with its ``config``, ``model`` (the torch model),
    ``tokenizer`` and ``tokenizer_bytes``; its LM kind is its ``kind`` or its class's (``family.kinds_of``).
    ``family`` forces a model_type; by default the one family that can represent the model exactly.
    Files of the same names in ``path`` are replaced; ``prune`` also removes an older model's other
    weight, config and tokenizer files (``hf_io.write_hf_checkpoint``).

    ``dtype``: the floating-point dtype written (``"float32"``, ``"bfloat16"``, ``"float16"``); by
    default (None or ``"auto"``) the model's own, recorded in config.json's ``dtype``/``torch_dtype``.
    ``max_shard_size`` (bytes, ``"2GB"``, ``"500MB"``): larger weights are written as
    ``model-0000i-of-0000N.safetensors`` shards + ``model.safetensors.index.json`` (``shards``).
    """
    target_dtype = dtypes.resolve(dtype)
    config = module.config
    fix = "change those fields of the model's config, or export with --format ckpt"
    if family is not None:
        chosen = HF_FAMILIES.get(family).factory()
        problems = chosen.mismatches(config, module)
        if problems:
            raise ConfigError(f"cannot export as {family}: " + "; ".join(problems) + f"; {fix}")
    else:
        fits, reasons = [], []
        for entry in HF_FAMILIES.entries():
            candidate = entry.factory()
            problems = candidate.mismatches(config, module)
            (fits.append(candidate) if not problems else reasons.append(f"{entry.name}: {'; '.join(problems)}"))
        if not fits:
            raise ConfigError(
                "no Hugging Face family can represent this model exactly:\n  " + "\n  ".join(reasons) + f"\n{fix}"
            )
        chosen = fits[0]
    hf_config = chosen.config_to_hf(config)
    hf_config.update(special_token_ids(module))
    weights = chosen.weights_to_hf(getattr(module, "model", module).state_dict(), config)
    weights = dtypes.cast(weights, target_dtype) if target_dtype is not None else weights
    hf_config.update(dtypes.hf_fields(weights))
    files = tokenizer_files(module)
    if chosen.generates:  # transformers keeps generation defaults there
        files["generation_config.json"] = (json.dumps(generation_config(hf_config, module), indent=2, sort_keys=True)
                                           + "\n").encode()
    return write_hf_checkpoint(path, hf_config, weights, files, prune=prune, max_shard_size=max_shard_size)


__all__ = ["read_hf_model", "HFModel", "to_hf", "special_tokens_from_hf", "HF_FAMILIES", "HFFamily"]
