"""Hugging Face Gemma 3 text family (``model_type: gemma3_text``, ``Gemma3ForCausalLM``): Gemma 2's
block (four norms, ``query_pre_attn_scalar``, sliding layers among full ones) plus per-head QK-norm
(Gemma's RMSNorm over head_dim, before RoPE), one full layer in six by default
(``sliding_window_pattern``), and its own RoPE base on the sliding layers.

transformers 5.25 does not apply ``attn_logit_softcapping`` in Gemma 3 (it is read and unused), so
it is dropped on import and never written; ``final_logit_softcapping`` is applied and mapped.
"""

from __future__ import annotations

from typing import Any, ClassVar

from llm_modules.config import ModelConfig
from llm_modules.interop.allow import Fixed
from llm_modules.interop.family import HF_FAMILIES
from llm_modules.interop.gemma import plain_rope_theta
from llm_modules.interop.gemma2 import FIELDS as GEMMA2_FIELDS, GEMMA2_DEFAULTS, Gemma2Family
from llm_modules.interop.slots import component
from llm_modules.registry import ConfigError

#: the per-layer-type keys of Gemma 3's ``rope_parameters``
GLOBAL, LOCAL = "full_attention", "sliding_attention"

#: what the gemma3_text family represents: every ModelConfig field (``allow``)
FIELDS = {
    **GEMMA2_FIELDS,
    "qk_norm": Fixed("head"),
    "attention_softcap": Fixed(None),  # transformers' Gemma 3 has none (see the module docstring)
}

#: transformers 5.25's Gemma3TextConfig defaults
GEMMA3_DEFAULTS = {
    **GEMMA2_DEFAULTS, "max_position_embeddings": 131072, "attn_logit_softcapping": None,
    "final_logit_softcapping": None, "rope_theta": 1_000_000.0, "rope_local_base_freq": 10_000.0,
}


def rope_parameters_per_layer_type(hf: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``rope_parameters`` by layer type, as transformers 5.25's Gemma3TextConfig makes them: the
    nested dict of config.json, or one built from the older ``rope_theta`` / ``rope_local_base_freq``
    / ``rope_scaling`` (which scales the full layers only), each base defaulting as transformers'."""
    given = hf.get("rope_parameters") or {}
    full = dict(given.get(GLOBAL) or {"rope_type": "default"})
    local = dict(given.get(LOCAL) or {"rope_type": "default"})
    if hf.get("rope_scaling") is not None:
        full.update(hf["rope_scaling"])
    full.setdefault("rope_theta", hf.get("rope_theta", GEMMA3_DEFAULTS["rope_theta"]))
    local.setdefault("rope_theta", hf.get("rope_local_base_freq", GEMMA3_DEFAULTS["rope_local_base_freq"]))
    return {GLOBAL: full, LOCAL: local}


@HF_FAMILIES.register("gemma3_text")
class Gemma3TextFamily(Gemma2Family):
    """Gemma 3's text decoder (``Gemma3ForCausalLM``)."""

    model_type, fields = "gemma3_text", FIELDS
    architecture: ClassVar[str] = "Gemma3ForCausalLM"
    defaults: ClassVar[dict[str, Any]] = GEMMA3_DEFAULTS

    def full_layer_every(self, hf: dict[str, Any]) -> int:
        """Gemma 3's released configs give the pattern as ``sliding_window_pattern`` (6: five sliding
        layers, then a full one)."""
        every = hf.get("sliding_window_pattern", 6)
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ConfigError(f"{self.model_type} config.json: sliding_window_pattern {every!r} must be a positive "
                              "integer (every n-th layer is full), or give layer_types")
        return every

    def layer_settings_from_hf(self, hf: dict[str, Any]) -> dict[str, Any]:
        settings = super().layer_settings_from_hf(hf)
        settings.pop("attention", None)  # no soft-capped attention: the default backend
        return {**settings, "qk_norm": "head", "attention_softcap": None}

    def position_from_hf(self, hf: dict[str, Any]) -> dict[str, Any]:
        per_type = rope_parameters_per_layer_type(hf)
        theta = plain_rope_theta({"rope_parameters": per_type[GLOBAL]}, self.model_type, 0.0)
        local = plain_rope_theta({"rope_parameters": per_type[LOCAL]}, self.model_type, 0.0)
        if local != theta:
            raise ConfigError(f"{self.model_type} config.json: the sliding layers' RoPE base {local} differs from the "
                              f"full layers' {theta}; a RoPE base per layer type is not supported yet")
        return {"name": "rope", "theta": theta}

    def position_to_hf(self, config: ModelConfig) -> dict[str, Any]:
        theta = float(component(config, "position")[1]["theta"])
        plain = {"rope_type": "default", "rope_theta": theta}
        # transformers 5 reads rope_parameters per layer type; older versions rope_theta and rope_local_base_freq
        return {"rope_parameters": {GLOBAL: plain, LOCAL: dict(plain)}, "rope_theta": theta,
                "rope_local_base_freq": theta}

    def config_to_hf(self, config: ModelConfig) -> dict[str, Any]:
        return {**super().config_to_hf(config), "use_bidirectional_attention": False}

    def attention_norms(self, config: ModelConfig) -> tuple[tuple[str, str], ...]:
        return (("q_norm", "q_norm"), ("k_norm", "k_norm"))
