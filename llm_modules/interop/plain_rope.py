"""Plain RoPE (no frequency scaling) read from a config.json whose family names its base and its
rotary fraction in its own way: transformers 5 writes ``rope_parameters`` (``rope_theta``,
``partial_rotary_factor``), older configs the family's own keys (GPT-NeoX ``rotary_emb_base`` and
``rotary_pct``) or ``rope_theta`` + ``rope_scaling``.

A scaled variant (linear, dynamic, yarn, ...) is refused here, never dropped: the families that use
this reader have no scaling of their own, and the registry's scaled RoPE lives in ``interop.rope``.
"""

from __future__ import annotations

from typing import Any

from llm_modules.registry import ConfigError


def plain_rope_from_hf(hf: dict[str, Any], family: str, theta_key: str = "rope_theta",
                       fraction_key: str | None = None, default_fraction: float = 1.0) -> dict[str, Any]:
    """Our ``position`` slot value: ``{name: rope, theta, fraction}`` (fraction only when not 1)."""
    params = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type != "default":
        raise ConfigError(
            f"{family} config.json: rope type {rope_type!r} is not supported for {family} (only plain RoPE, "
            "rope_type 'default'); remove the rope scaling from config.json or use a model without it"
        )
    theta = params.get("rope_theta", hf.get("rope_theta", hf.get(theta_key, 10000.0)))
    fraction = params.get("partial_rotary_factor", hf.get("partial_rotary_factor",
                                                           hf.get(fraction_key, default_fraction) if fraction_key
                                                           else default_fraction))
    position: dict[str, Any] = {"name": "rope", "theta": float(theta)}
    if float(fraction) != 1.0:
        position["fraction"] = float(fraction)
    return position
