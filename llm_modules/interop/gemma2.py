"""Hugging Face Gemma 2 family (``model_type: gemma2``, ``Gemma2ForCausalLM``): Gemma plus four norms
per block (``sandwich``: input / post-attention / pre-feedforward / post-feedforward), soft-capped
attention scores and final logits, ``query_pre_attn_scalar`` as the attention scale, and sliding
window layers alternating with full ones (``layer_types``).

Soft-capped attention runs on the ``eager`` backend on import (``sdpa`` cannot soft-cap).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

from llm_modules.config import ModelConfig
from llm_modules.interop.allow import ANY, Activation, Check, Mapped, Slot
from llm_modules.interop.family import HF_FAMILIES
from llm_modules.interop.gemma import DEFAULTS, FIELDS as GEMMA_FIELDS, GATED, GemmaFamily
from llm_modules.registry import ConfigError

#: config.json's layer types, ours
LAYER_TYPES = {"sliding_attention": "sliding", "full_attention": "full"}


def scale_is_a_scalar(config: ModelConfig) -> bool:
    """The attention scale is ``query_pre_attn_scalar ** -0.5`` for a whole number (transformers'
    config field is an int), or the default 1/sqrt(head_dim)."""
    if config.attention_scale is None:
        return True
    scalar = round(config.attention_scale**-2)
    return scalar > 0 and math.isclose(scalar**-0.5, config.attention_scale, rel_tol=1e-9)


#: what the gemma2 family represents: every ModelConfig field (``allow``)
FIELDS = {
    **GEMMA_FIELDS,
    "d_model": Check(lambda c: c.d_model % c.n_heads == 0,
                     "d_model a multiple of n_heads (transformers' Gemma2Config refuses others, even with "
                     "head_dim set)"),
    "residual": Slot("sandwich"),
    "activation": Activation(GATED, d_ff=ANY, bias=False, dropout=ANY),
    "attention_scale": Check(scale_is_a_scalar, "attention_scale = query_pre_attn_scalar ** -0.5 for a whole number "
                             "query_pre_attn_scalar (null: head_dim)"),
    "attention_softcap": Mapped("attn_logit_softcapping"),
    "logit_softcap": Mapped("final_logit_softcapping"),
    "sliding_window": Mapped("sliding_window"),
    "layer_types": Mapped("layer_types"),
}

#: transformers 5.25's Gemma2Config defaults
GEMMA2_DEFAULTS = {
    **DEFAULTS, "num_key_value_heads": 4, "hidden_activation": "gelu_pytorch_tanh", "query_pre_attn_scalar": 256,
    "sliding_window": 4096, "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0,
}


@HF_FAMILIES.register("gemma2")
class Gemma2Family(GemmaFamily):
    """Gemma 2 (``Gemma2ForCausalLM``); the base of the Gemma 3 family."""

    model_type, fields = "gemma2", FIELDS
    architecture: ClassVar[str] = "Gemma2ForCausalLM"
    defaults: ClassVar[dict[str, Any]] = GEMMA2_DEFAULTS
    activations: ClassVar[dict] = GATED
    activation_key: ClassVar[str] = "hidden_activation"

    def activation_name(self, hf: dict[str, Any]) -> str:
        """Gemma 2 and 3 read ``hidden_activation`` (``hidden_act``, also in some configs, is unused)."""
        return self.setting(hf, "hidden_activation")

    def full_layer_every(self, hf: dict[str, Any]) -> int:
        """transformers' layer pattern for a config.json without ``layer_types``: every n-th layer is
        full, the others slide (Gemma 2: every other one)."""
        return 2

    def layer_types_from_hf(self, hf: dict[str, Any]) -> list[str]:
        """config.json's ``layer_types``, or transformers' default pattern."""
        n = hf["num_hidden_layers"]
        types = hf.get("layer_types")
        if types is None:
            every = self.full_layer_every(hf)
            return ["sliding_attention" if (i + 1) % every else "full_attention" for i in range(n)]
        unknown = [t for t in types if t not in LAYER_TYPES]
        if unknown or len(types) != n:
            raise ConfigError(f"{self.model_type} config.json: layer_types {types!r} must list num_hidden_layers={n} "
                              f"entries, each {' or '.join(map(repr, LAYER_TYPES))}")
        return list(types)

    def layer_settings_from_hf(self, hf: dict[str, Any]) -> dict[str, Any]:
        types = [LAYER_TYPES[t] for t in self.layer_types_from_hf(hf)]
        window = self.setting(hf, "sliding_window")
        if window is None:
            raise ConfigError(f"{self.model_type} config.json: sliding_window is null; transformers builds the sliding "
                              "layers' mask for every model of the family and needs a window size: set it")
        if "sliding" not in types:  # no layer is windowed: the window size changes nothing
            window_fields: dict[str, Any] = {"sliding_window": None, "layer_types": None}
        else:  # listed even when all slide: sliding layers rotate with their own RoPE base (Gemma 3)
            window_fields = {"sliding_window": window, "layer_types": types}
        scalar = self.setting(hf, "query_pre_attn_scalar")
        head_dim = self.setting(hf, "head_dim")
        softcap = self.setting(hf, "attn_logit_softcapping")
        return {
            "residual": "sandwich",
            "attention_scale": None if scalar == head_dim else scalar**-0.5,
            "attention_softcap": softcap,
            "logit_softcap": self.setting(hf, "final_logit_softcapping"),
            # sdpa cannot soft-cap attention scores; eager computes the same attention otherwise
            **({"attention": "eager"} if softcap is not None else {}),
            **window_fields,
        }

    def config_to_hf(self, config: ModelConfig) -> dict[str, Any]:
        return {
            **super().config_to_hf(config),
            "query_pre_attn_scalar": config.dim_per_head if config.attention_scale is None
            else round(config.attention_scale**-2),
            "attn_logit_softcapping": config.attention_softcap,
            "final_logit_softcapping": config.logit_softcap,
            # transformers builds a sliding mask even when no layer uses it, so a size is always written
            "sliding_window": config.sliding_window or config.max_seq_len,
            "layer_types": [("sliding_attention" if s else "full_attention") for s in config.sliding_layers],
        }

    def block_norms(self) -> tuple[tuple[str, str], ...]:
        return (
            ("residual.norms_in.0", "input_layernorm"),
            ("residual.norms_out.0", "post_attention_layernorm"),
            ("residual.norms_in.1", "pre_feedforward_layernorm"),
            ("residual.norms_out.1", "post_feedforward_layernorm"),
        )
