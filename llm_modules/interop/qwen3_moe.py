"""Hugging Face Qwen3-MoE family (``model_type: qwen3_moe``): Qwen2-MoE's decoder without the shared
expert, with QK-norm (an RMSNorm over each head's queries and keys, before RoPE), one
``attention_bias`` for all four projections, and a sliding window on every layer or none
(``use_sliding_window``). Routing as Qwen2-MoE's (``qwen2_moe.QwenMoeFamily``).
"""

from __future__ import annotations

from typing import Any

from llm_modules.config import ModelConfig
from llm_modules.interop.allow import ANY, Check, Fixed, Mapped
from llm_modules.interop.common import follows_bias
from llm_modules.interop.family import HF_FAMILIES
from llm_modules.interop.moe_experts import MoEActivation
from llm_modules.interop.qwen2_moe import QWEN_MOE_FIELDS, QwenMoeFamily, projections
from llm_modules.interop.slots import ffn_hidden
from llm_modules.interop.weights import Map, rotary_halves

FIELDS = {
    **QWEN_MOE_FIELDS,
    "activation": MoEActivation(normalize_top_k=ANY, fp32_combine=False, shared_d_ff=None, shared_gate=ANY,
                                jitter_noise=0.0),
    "layer_types": Check(lambda c: len(set(c.sliding_layers)) == 1,
                         "the same attention on every layer (sliding_window on all layers or none)"),
    "qk_norm": Fixed("head"),
    "bias": Mapped("attention_bias"),
    "qkv_bias": follows_bias("qkv_bias"),
}


@HF_FAMILIES.register("qwen3_moe")
class Qwen3MoeFamily(QwenMoeFamily):
    """Qwen3-MoE-style decoders (``Qwen3MoeForCausalLM``)."""

    model_type, architecture, fields = "qwen3_moe", "Qwen3MoeForCausalLM", FIELDS

    def attention_from_hf(self, hf: dict[str, Any]) -> dict[str, Any]:
        return {"bias": bool(hf.get("attention_bias", False)), "qk_norm": "head"}

    def attention_to_hf(self, config: ModelConfig) -> dict[str, Any]:
        return {"attention_bias": config.bias}

    def window_from_hf(self, hf: dict[str, Any]) -> dict[str, Any]:
        window = hf.get("sliding_window") if hf.get("use_sliding_window") else None
        return {"sliding_window": window} if window else {}

    def window_to_hf(self, config: ModelConfig) -> dict[str, Any]:
        windowed = all(config.sliding_layers) and config.sliding_window is not None
        return {"use_sliding_window": windowed, "sliding_window": config.sliding_window if windowed else None}

    def shared_to_hf(self, config: ModelConfig) -> dict[str, Any]:
        # intermediate_size sizes only dense layers, which an all-MoE model has none of
        return {"intermediate_size": ffn_hidden(config, gated=True)}

    def attention_entries(self, ours, theirs, config, halves):
        # the per-head norms' gains follow the features of a head, reordered as q and k are
        norm = {"transform": rotary_halves(1)} if halves else {}
        return (
            *projections(ours, theirs, dict.fromkeys("qkvo", config.bias), halves),
            Map(f"{ours}.q_norm.weight", f"{theirs}.q_norm.weight", **norm),
            Map(f"{ours}.k_norm.weight", f"{theirs}.k_norm.weight", **norm),
        )
