"""RoPE frequency scaling: the inverse frequencies and the attention factor of each variant.

A ``rope`` position takes ``scaling: {type: ..., **parameters}`` (plain data, or null for plain
RoPE), with the parameter names of transformers' ``rope_parameters`` so that a checkpoint's
values carry over as they are:

- ``linear`` (position interpolation): every frequency divided by ``factor``;
- ``dynamic`` (NTK): the base grows with the longest position seen beyond
  ``original_max_position_embeddings`` (transformers' ``max_position_embeddings``);
- ``yarn``: a ramp between interpolated and original frequencies, and an attention factor that
  scales cos and sin;
- ``llama3``: low frequencies divided by ``factor``, high ones kept, a smooth ramp between;
- ``longrope`` (Phi-3): per-frequency ``short_factor`` up to ``original_max_position_embeddings``,
  ``long_factor`` beyond, and an attention factor.

The formulas follow transformers' ``modeling_rope_utils`` operation for operation (the same
dtypes, the same order), so that the frequencies are equal, not merely close.
"""

from __future__ import annotations

import math
from numbers import Real
from typing import Any

import torch

from llm_modules.registry import ConfigError, did_you_mean

#: each type's (required, optional) parameters
SCALING_TYPES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "linear": (("factor",), ()),
    "dynamic": (("factor", "original_max_position_embeddings"), ()),
    "yarn": (("factor", "original_max_position_embeddings"),
             ("attention_factor", "beta_fast", "beta_slow", "mscale", "mscale_all_dim", "truncate")),
    "llama3": (("factor", "original_max_position_embeddings", "low_freq_factor", "high_freq_factor"), ()),
    "longrope": (("factor", "original_max_position_embeddings", "short_factor", "long_factor"), ("attention_factor",)),
}

_WHAT = "position rope: scaling"


def check_scaling(scaling: Any, rot_dim: int) -> dict[str, Any] | None:
    """The scaling option validated (a dict with ``type`` and that type's parameters), or None.
    A wrong value is one ConfigError naming the option and the fix."""
    if scaling is None:
        return None
    if not isinstance(scaling, dict) or "type" not in scaling:
        raise ConfigError(f"{_WHAT} must be null or a mapping with a 'type' ({', '.join(SCALING_TYPES)}) and its "
                          f"parameters, e.g. {{type: linear, factor: 2.0}}; got {scaling!r}")
    kind = scaling["type"]
    if kind not in SCALING_TYPES:
        raise ConfigError(f"{_WHAT} type {kind!r} is unknown{did_you_mean(str(kind), SCALING_TYPES, 0.5)}; "
                          f"choices: {', '.join(SCALING_TYPES)}")
    required, optional = SCALING_TYPES[kind]
    params = {k: v for k, v in scaling.items() if k != "type"}
    for key in params:
        if key not in required + optional:
            raise ConfigError(f"{_WHAT} type {kind!r} has no parameter {key!r}"
                              f"{did_you_mean(key, required + optional, 0.5)}; its parameters: "
                              f"{', '.join(required + optional)}")
    missing = [key for key in required if params.get(key) is None]
    if missing:
        raise ConfigError(f"{_WHAT} type {kind!r} needs {', '.join(missing)}; add "
                          f"{', '.join(f'{k}: ...' for k in missing)} to position.scaling")
    for key, value in params.items():
        if key in ("short_factor", "long_factor"):
            if not isinstance(value, (list, tuple)) or len(value) != rot_dim // 2 \
                    or not all(isinstance(v, Real) and not isinstance(v, bool) and v > 0 for v in value):
                raise ConfigError(f"{_WHAT} {key} must be a list of {rot_dim // 2} positive numbers (one per rotary "
                                  f"frequency: rotary dims / 2); got {value!r}")
        elif key == "truncate":
            if not isinstance(value, bool):
                raise ConfigError(f"{_WHAT} truncate must be true or false; got {value!r}")
        elif key == "original_max_position_embeddings":
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{_WHAT} original_max_position_embeddings must be a positive integer; got {value!r}")
        elif value is not None and (not isinstance(value, Real) or isinstance(value, bool) or value < 0 or
                                    (key == "factor" and value <= 0)):
            raise ConfigError(f"{_WHAT} {key} must be a {'positive' if key == 'factor' else 'non-negative'} "
                              f"number; got {value!r}")
    if kind == "dynamic" and rot_dim <= 2:
        raise ConfigError(f"{_WHAT} type 'dynamic' needs more than 2 rotary dims (its base exponent is "
                          f"dim / (dim - 2)); got {rot_dim}: raise head_dim or fraction")
    if kind == "llama3" and params["high_freq_factor"] <= params["low_freq_factor"]:
        raise ConfigError(f"{_WHAT} high_freq_factor ({params['high_freq_factor']}) must be greater than "
                          f"low_freq_factor ({params['low_freq_factor']})")
    return {"type": kind, **{k: (list(v) if isinstance(v, tuple) else v) for k, v in params.items() if v is not None}}


def plain_frequencies(theta: float, dim: int) -> torch.Tensor:
    """Unscaled RoPE: ``1 / theta^(2i/dim)``."""
    return 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))


def frequencies(theta: float, dim: int, scaling: dict[str, Any] | None) -> tuple[torch.Tensor, float]:
    """(inverse frequencies, attention factor) at build time: for ``dynamic`` the unscaled ones
    (it scales only once a longer sequence comes), for ``longrope`` the short factors."""
    kind = scaling["type"] if scaling else None
    if kind is None:
        return plain_frequencies(theta, dim), 1.0
    if kind == "dynamic":
        return dynamic_frequencies(theta, dim, scaling, None), 1.0
    if kind == "linear":
        return plain_frequencies(theta, dim) / scaling["factor"], 1.0
    if kind == "llama3":
        return llama3_frequencies(theta, dim, scaling), 1.0
    if kind == "yarn":
        return yarn_frequencies(theta, dim, scaling), yarn_attention_factor(scaling)
    return longrope_frequencies(theta, dim, scaling["short_factor"]), longrope_attention_factor(scaling)


def llama3_frequencies(theta: float, dim: int, scaling: dict[str, Any]) -> torch.Tensor:
    """Llama 3.1: wavelengths beyond ``original / low_freq_factor`` divided by ``factor``, those
    below ``original / high_freq_factor`` kept, a linear blend in between."""
    inv_freq = plain_frequencies(theta, dim)
    factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    original = scaling["original_max_position_embeddings"]
    low_wavelen, high_wavelen = original / low, original / high
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (original / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
    return torch.where(medium, smoothed, scaled)


def yarn_mscale(factor: float, mscale: float = 1.0) -> float:
    """YaRN's attention temperature, ``0.1 * mscale * ln(factor) + 1`` (1 for factor <= 1)."""
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def yarn_attention_factor(scaling: dict[str, Any]) -> float:
    if scaling.get("attention_factor") is not None:
        return scaling["attention_factor"]
    factor, mscale, mscale_all_dim = scaling["factor"], scaling.get("mscale"), scaling.get("mscale_all_dim")
    if mscale and mscale_all_dim:
        return float(yarn_mscale(factor, mscale) / yarn_mscale(factor, mscale_all_dim))
    return yarn_mscale(factor)


def yarn_frequencies(theta: float, dim: int, scaling: dict[str, Any]) -> torch.Tensor:
    """YaRN: frequencies that turn fewer than ``beta_slow`` times over the original context are
    interpolated (divided by ``factor``), those that turn more than ``beta_fast`` times kept, a
    linear ramp over the dimensions between."""
    factor, original = scaling["factor"], scaling["original_max_position_embeddings"]
    beta_fast, beta_slow = scaling.get("beta_fast") or 32, scaling.get("beta_slow") or 1

    def correction_dim(rotations: float) -> float:
        return (dim * math.log(original / (rotations * 2 * math.pi))) / (2 * math.log(theta))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if scaling.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # no zero-width ramp
    ramp = torch.clamp((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
    pos_freqs = theta ** (torch.arange(0, dim, 2).float() / dim)
    extrapolation, interpolation = 1.0 / pos_freqs, 1.0 / (factor * pos_freqs)
    keep = 1 - ramp
    return interpolation * (1 - keep) + extrapolation * keep


def longrope_frequencies(theta: float, dim: int, factors: list[float]) -> torch.Tensor:
    """LongRoPE: each frequency divided by its own rescale factor."""
    shape = torch.arange(0, dim, 2, dtype=torch.int64).float() / dim
    return 1.0 / (torch.tensor(factors, dtype=torch.float32) * theta**shape)


def longrope_attention_factor(scaling: dict[str, Any]) -> float:
    if scaling.get("attention_factor") is not None:
        return scaling["attention_factor"]
    factor = scaling["factor"]
    if factor <= 1.0:
        return 1.0
    return math.sqrt(1 + math.log(factor) / math.log(scaling["original_max_position_embeddings"]))


def dynamic_frequencies(theta: float, dim: int, scaling: dict[str, Any], seq_len: int | None) -> torch.Tensor:
    """Dynamic NTK for sequences of ``seq_len`` (None: the original length, where the base is
    unchanged up to rounding): the base raised so that the longest wavelength stretches with the
    sequence. A length is used as an int64 tensor, as transformers does at run time (its float32
    path); None takes its build-time path (Python floats), so both give its exact values."""
    factor, original = scaling["factor"], scaling["original_max_position_embeddings"]
    if seq_len is None:
        length: Any = original
    else:
        length = torch.maximum(torch.tensor(seq_len, dtype=torch.int64), torch.tensor(original, dtype=torch.int64))
    base = theta * ((factor * length / original) - (factor - 1)) ** (dim / (dim - 2))
    return 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
