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
from llm_modules.interop.allow import ANY, Fixed, Slot
from llm_modules.interop.family import HF_FAMILIES
from llm_modules.interop.gemma import no_partial_rotary
from llm_modules.interop.gemma2 import FIELDS as GEMMA2_FIELDS, GEMMA2_DEFAULTS, Gemma2Family
from llm_modules.interop.rope import GLOBAL, LOCAL, rope_from_hf, rope_to_hf
from llm_modules.interop.slots import component
from llm_modules.registry import ConfigError


class UnscaledSlidingRope(Slot):
    """Gemma 3's RoPE: its own base on the sliding layers (``local_theta``), which rotate unscaled.
    A scaled RoPE without ``local_theta`` would scale the sliding layers too, which the family's
    config.json can say but ``rope_from_hf`` does not read back, so it is refused; so is a
    ``local_theta`` that the model does not use (windowed layers not listed in ``layer_types``)."""

    def problems(self, config: ModelConfig, field: str, family: str) -> list[str]:
        found = super().problems(config, field, family)
        options = component(config, field)[1]
        if found:
            return found
        if options.get("scaling") and options.get("local_theta") is None and any(config.sliding_layers):
            found.append(f"position 'rope' with scaling and local_theta=None (the {family} family rotates the sliding "
                         "layers unscaled, with their own base: set local_theta, e.g. to theta)")
        if options.get("local_theta") is not None and config.sliding_window is not None and config.layer_types is None:
            # without layer_types every layer is windowed but rotates with ``theta`` (nn.transformer.Stack)
            found.append(f"position 'rope' with local_theta and layer_types=None (in the {family} family the sliding "
                         "layers rotate with local_theta: list layer_types, e.g. all 'sliding')")
        return found


#: what the gemma3_text family represents: every ModelConfig field (``allow``)
FIELDS = {
    **GEMMA2_FIELDS,
    "qk_norm": Fixed("head"),
    "attention_softcap": Fixed(None),  # transformers' Gemma 3 has none (see the module docstring)
    "position": UnscaledSlidingRope("rope", theta=ANY, fraction=1.0, interleaved=ANY, scaling=ANY, local_theta=ANY,
                                    longrope_recompute=False),
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
    qk_norms: ClassVar[bool] = True

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
        """RoPE per layer type as transformers builds it (``rope_parameters_per_layer_type``), read by
        ``rope_from_hf``: the full layers' base and scaling, and the sliding layers' base."""
        nested = {"rope_parameters": rope_parameters_per_layer_type(hf),
                  "max_position_embeddings": self.setting(hf, "max_position_embeddings")}
        return no_partial_rotary(rope_from_hf(nested, self.model_type), self.model_type)

    def position_to_hf(self, config: ModelConfig) -> dict[str, Any]:
        """Always per layer type: transformers' Gemma 3 gives the sliding layers a base of 10000 unless
        config.json says otherwise, whatever ``rope_theta`` is."""
        written = rope_to_hf(config)
        if GLOBAL not in written["rope_parameters"]:  # no local_theta: the sliding layers rotate as the full ones
            full = written["rope_parameters"]
            written["rope_parameters"] = {GLOBAL: full, LOCAL: dict(full)}
            written["rope_local_base_freq"] = full["rope_theta"]
        return written

    def config_to_hf(self, config: ModelConfig) -> dict[str, Any]:
        return {**super().config_to_hf(config), "use_bidirectional_attention": False}
