"""Hugging Face Phi-3 family (``model_type: phi3``): a LLaMA with fused projections.

``qkv_proj`` holds q, k and v side by side (k and v narrower under GQA), ``gate_up_proj`` the gate
and up halves of the SwiGLU; RoPE may be partial (``partial_rotary_factor``) and longrope-scaled
(Phi-3 mini/small 128k: short factors up to ``original_max_position_embeddings``, long beyond),
and every layer may attend through a ``sliding_window``. Positions as in ``llama``: equal on
right-padded batches; with left padding pass ``position_ids`` to transformers.
"""

from __future__ import annotations

from typing import Any

from llm_modules.config import ModelConfig
from llm_modules.interop.allow import ANY, Activation, Check, Fixed, Ignored, Mapped, Slot
from llm_modules.interop.common import (
    DECODER_HEAD,
    FEATURES_OFF,
    RUN_SETTINGS,
    SCALED_ATTENTION,
    llama_fields_from_hf,
    llama_hf_fields,
    llama_layout,
    sizes,
    untie_if_head_differs,
)
from llm_modules.interop.family import HF_FAMILIES, HFFamily
from llm_modules.interop.llama import _GATED
from llm_modules.interop.rope import rope_from_hf, rope_to_hf
from llm_modules.interop.slots import activation_from_hf, activation_to_hf, component, ffn_hidden
from llm_modules.interop.weights import Map, StateDict, WeightTable, side_by_side

#: transformers' Phi3Config reads these legacy rope_scaling types as longrope
_LONGROPE_ALIASES = ("su", "yarn")
#: Phi3Config's own default, which it prefers to the value inside the rope parameters
_ORIGINAL_DEFAULT = 4096


class _RopeDefaultOrLongrope(Slot):
    """RoPE unscaled or longrope: transformers' Phi3Config refuses every other scaling type, and
    its generate recomputes the cached keys once a sequence grows past the original length
    (``longrope_recompute: true``)."""

    def problems(self, config: ModelConfig, field: str, family: str) -> list[str]:
        found = super().problems(config, field, family)
        options = component(config, field)[1]
        scaling = options.get("scaling")
        if scaling and scaling["type"] != "longrope":
            found.append(f"position 'rope' with scaling type {scaling['type']!r} (the {family} family has longrope "
                         "scaling or none)")
        elif scaling and not options.get("longrope_recompute"):
            found.append(f"position 'rope' with longrope_recompute=False (the {family} family recomputes the cached "
                         "keys past the original length; set longrope_recompute: true)")
        return found


#: what the phi3 family represents: every ModelConfig field (``allow``)
FIELDS = {
    **sizes("hidden_size", "num_hidden_layers", "num_attention_heads"),
    **RUN_SETTINGS,
    **FEATURES_OFF,
    **DECODER_HEAD,
    "sliding_window": Mapped("sliding_window"),
    "d_model": Check(lambda c: c.d_model % c.n_heads == 0, "d_model a multiple of n_heads"),
    "n_kv_heads": Mapped("num_key_value_heads"),
    "head_dim": Check(lambda c: c.dim_per_head * c.n_heads == c.d_model, "head_dim = d_model / n_heads",
                      lambda c, f: f"head_dim={c.dim_per_head} with d_model={c.d_model}, n_heads={c.n_heads}"),
    "d_ff": Mapped("intermediate_size"),
    "max_seq_len": Mapped("max_position_embeddings"),
    "norm": Slot("rmsnorm", eps=ANY),
    "norm_eps": Mapped("rms_norm_eps"),
    "residual": Slot("pre"),
    "activation": Activation(_GATED, d_ff=ANY, bias=False, dropout=ANY),
    "position": _RopeDefaultOrLongrope("rope", theta=ANY, fraction=ANY, interleaved=False, scaling=ANY,
                                       local_theta=None, longrope_recompute=ANY),
    "bias": Fixed(False),
    "dropout": Ignored("dropout is off at inference (Phi-3's resid_pdrop and embd_pdrop likewise)"),
    "attention_dropout": Mapped("attention_dropout"),
    "attention_scale": SCALED_ATTENTION,
    "tie_embeddings": Mapped("tie_word_embeddings"),
    "embedding_norm": Fixed(False),
    "init_std": Mapped("initializer_range"),
}


def phi3_rope(hf: dict[str, Any]) -> dict[str, Any]:
    """Phi-3's RoPE as transformers' Phi3Config reads it: legacy types "su"/"yarn" are longrope,
    and its top-level ``original_max_position_embeddings`` (default 4096) is the one used."""
    hf = dict(hf)
    for key in ("rope_scaling", "rope_parameters"):
        params = hf.get(key)
        if params and params.get("rope_type", params.get("type")) in _LONGROPE_ALIASES:
            hf[key] = {**{k: v for k, v in params.items() if k != "type"}, "rope_type": "longrope"}
    hf.setdefault("original_max_position_embeddings", _ORIGINAL_DEFAULT)
    spec = rope_from_hf(hf, "phi3")
    if "scaling" in spec:
        spec["longrope_recompute"] = True  # what Phi3ForCausalLM's generate does
    return spec


@HF_FAMILIES.register("phi3")
class Phi3Family(HFFamily):
    """Phi-3 / Phi-3.5 / Phi-4-mini-style decoders (``Phi3ForCausalLM``)."""

    model_type, kind, kind_words, fields = "phi3", "CausalLM", "a causal decoder", FIELDS

    def config_from_hf(self, hf: dict[str, Any]) -> ModelConfig:
        return ModelConfig(
            **llama_fields_from_hf(hf, max_seq_len=4096, norm_eps=1e-5),
            d_ff=hf["intermediate_size"],
            norm="rmsnorm",
            residual="pre",
            activation=activation_from_hf(hf.get("hidden_act", "silu"), _GATED, "phi3"),
            position=phi3_rope(hf),
            bias=False,
            sliding_window=hf.get("sliding_window"),
        )

    def refine_config(self, config: ModelConfig, weights: StateDict) -> ModelConfig:
        return untie_if_head_differs(config, weights, "embed_tokens.weight", ("model.", ""))

    def config_to_hf(self, config: ModelConfig) -> dict[str, Any]:
        rope = rope_to_hf(config)
        scaling = component(config, "position")[1]["scaling"]
        # Phi3Config prefers its top-level original length (default 4096) to the rope parameters'
        original = scaling["original_max_position_embeddings"] if scaling else config.max_seq_len
        return {
            **llama_hf_fields(config, "phi3", "Phi3ForCausalLM", rope=rope, head_dim=False),
            "intermediate_size": ffn_hidden(config, gated=True),
            "hidden_act": activation_to_hf(config, _GATED),
            "original_max_position_embeddings": original,
            "sliding_window": config.sliding_window,
            "resid_pdrop": 0.0,
            "embd_pdrop": 0.0,
        }

    def weight_table(self, config: ModelConfig) -> WeightTable:
        q_rows, kv_rows = config.n_heads * config.dim_per_head, config.kv_heads * config.dim_per_head
        ours, theirs = "stack.layers.{i}", "model.layers.{i}"
        layer = (
            Map(f"{ours}.residual.norms.0.weight", f"{theirs}.input_layernorm.weight"),
            Map(f"{ours}.residual.norms.1.weight", f"{theirs}.post_attention_layernorm.weight"),
            Map(tuple(f"{ours}.attn.{n}.weight" for n in "qkv"), f"{theirs}.self_attn.qkv_proj.weight",
                side_by_side((q_rows, kv_rows, kv_rows), dim=0)),
            Map(f"{ours}.attn.o.weight", f"{theirs}.self_attn.o_proj.weight"),
            Map((f"{ours}.ffn.gate.weight", f"{ours}.ffn.up.weight"), f"{theirs}.mlp.gate_up_proj.weight",
                side_by_side(2, dim=0)),
            Map(f"{ours}.ffn.down.weight", f"{theirs}.mlp.down_proj.weight"),
        )
        return llama_layout("phi3", config, layer)
