"""RoPE settings between a Hugging Face config.json and our ``rope`` position spec, both ways.

transformers 5 keeps them in ``rope_parameters`` (``rope_type``, ``rope_theta``, the scaling
parameters, ``partial_rotary_factor``; nested per layer type for Gemma 3); older configs have
``rope_theta`` and ``rope_scaling`` (type under ``type`` or ``rope_type``) at the top level, and
Phi-3 keeps ``original_max_position_embeddings`` there. Every llama-like family reads and writes
RoPE through these two functions. A parameter our RoPE does not represent exactly is refused.
"""

from __future__ import annotations

from typing import Any

from llm_modules.config import ModelConfig
from llm_modules.interop.slots import component
from llm_modules.nn.rope_scaling import SCALING_TYPES
from llm_modules.registry import ConfigError

#: the per-layer-type keys of a nested ``rope_parameters`` (Gemma 3)
GLOBAL, LOCAL = "full_attention", "sliding_attention"
#: keys transformers reads itself, outside the scaling parameters
_OWN_KEYS = ("rope_type", "type", "rope_theta", "partial_rotary_factor")
#: scaling types for which transformers ignores ``original_max_position_embeddings`` (dynamic uses
#: ``max_position_embeddings``); it carries no meaning there
_NO_ORIGINAL = ("default", "linear", "dynamic")


def rope_from_hf(hf: dict[str, Any], family: str, default_theta: float = 10000.0) -> dict[str, Any]:
    """Our ``position`` spec for an HF config.json (``family`` names it in errors)."""
    params = hf.get("rope_scaling") or hf.get("rope_parameters") or {}  # transformers' own priority
    local_theta = hf.get("rope_local_base_freq")
    if GLOBAL in params or LOCAL in params:
        local = dict(params.get(LOCAL) or {})
        local_type = local.get("rope_type", local.get("type", "default"))
        if local_type != "default" or set(local) - {"rope_type", "type", "rope_theta"}:
            raise ConfigError(f"{family} config.json: rope_parameters.{LOCAL} {local!r} scales the sliding layers' "
                              "RoPE; only an unscaled local base (rope_theta) is supported there")
        local_theta = local.get("rope_theta", local_theta)
        params = dict(params.get(GLOBAL) or {})
    params = {k: v for k, v in params.items() if v is not None}
    rope_type = params.get("rope_type", params.get("type", "default"))
    theta = float(params.get("rope_theta", hf.get("rope_theta", default_theta)))
    fraction = params.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))
    spec: dict[str, Any] = {"name": "rope", "theta": theta}
    if fraction != 1.0:
        spec["fraction"] = float(fraction)
    if local_theta is not None:
        spec["local_theta"] = float(local_theta)
    if rope_type == "default":
        return spec
    if rope_type not in SCALING_TYPES:
        raise ConfigError(f"{family} config.json: rope type {rope_type!r} is not supported; supported: default, "
                          f"{', '.join(SCALING_TYPES)}")
    required, optional = SCALING_TYPES[rope_type]
    scaling = {k: v for k, v in params.items() if k not in _OWN_KEYS}
    if rope_type in _NO_ORIGINAL:
        scaling.pop("original_max_position_embeddings", None)
    for key in scaling:
        if key not in required + optional:
            raise ConfigError(f"{family} config.json: rope parameter {key!r} of rope type {rope_type!r} is not "
                              f"supported (supported: {', '.join(required + optional)}); remove it from config.json "
                              "if the model does not need it")
    max_len = hf.get("max_position_embeddings")
    if rope_type == "dynamic":
        scaling["original_max_position_embeddings"] = max_len
    elif "original_max_position_embeddings" not in required:
        pass
    elif "original_max_position_embeddings" in hf:  # Phi-3 keeps it outside, and transformers prefers that one
        scaling["original_max_position_embeddings"] = hf["original_max_position_embeddings"]
    else:
        scaling.setdefault("original_max_position_embeddings", max_len)
    if rope_type == "longrope" and "factor" not in scaling and max_len and scaling["original_max_position_embeddings"]:
        scaling["factor"] = max_len / scaling["original_max_position_embeddings"]
    missing = [key for key in required if scaling.get(key) is None]
    if missing:
        raise ConfigError(f"{family} config.json: rope type {rope_type!r} needs {', '.join(missing)} (in "
                          "rope_parameters, or max_position_embeddings); add it to config.json")
    spec["scaling"] = {"type": rope_type, **scaling}
    return spec


def rope_to_hf(config: ModelConfig) -> dict[str, Any]:
    """config.json's RoPE fields for a model whose position is ``rope``: ``rope_parameters`` as
    transformers 5 writes them, plus ``rope_theta`` and ``rope_scaling`` for older readers
    (``partial_rotary_factor`` and Gemma 3's ``rope_local_base_freq`` too when set)."""
    name, options = component(config, "position")
    if name != "rope":
        raise ConfigError(f"position {name!r} is not RoPE; a RoPE family exports position rope only")
    theta, fraction, scaling = float(options["theta"]), options["fraction"], options["scaling"]
    params: dict[str, Any] = {"rope_type": "default", "rope_theta": theta}
    legacy = None
    if scaling:
        extra = {k: v for k, v in scaling.items() if k != "type"}
        if scaling["type"] == "dynamic":
            original = extra.pop("original_max_position_embeddings")
            if original != config.max_seq_len:
                raise ConfigError(
                    f"position rope: dynamic scaling from original_max_position_embeddings={original} differs from "
                    f"max_seq_len={config.max_seq_len}, which transformers' dynamic RoPE uses instead; set "
                    f"scaling.original_max_position_embeddings: {config.max_seq_len} or max_seq_len: {original}")
        params = {"rope_type": scaling["type"], "rope_theta": theta, **extra}
        legacy = {"type": scaling["type"], **extra}
    out: dict[str, Any] = {"rope_theta": theta}
    if fraction != 1.0:
        params["partial_rotary_factor"] = fraction
        out["partial_rotary_factor"] = fraction
    if options.get("local_theta") is not None:
        local = float(options["local_theta"])
        out["rope_parameters"] = {GLOBAL: params, LOCAL: {"rope_type": "default", "rope_theta": local}}
        out["rope_local_base_freq"] = local
    else:
        out["rope_parameters"] = params
    if legacy:
        out["rope_scaling"] = legacy
    return out
