"""Hugging Face Qwen3 family (``model_type: qwen3``): Qwen2's layout and windows with an RMSNorm on
queries and keys over each head's features (``q_norm``/``k_norm``, before RoPE: our ``qk_norm:
head``), an explicit ``head_dim`` (128 when config.json has none, not hidden_size / heads), and one
``attention_bias`` for all four attention projections (the MLP never has one).
"""

from __future__ import annotations

from typing import Any

from llm_modules.config import ModelConfig
from llm_modules.interop import llama
from llm_modules.interop.allow import ANY, Activation, Fixed, Mapped
from llm_modules.interop.family import HF_FAMILIES
from llm_modules.interop.qwen2 import DEFAULTS as QWEN2_DEFAULTS
from llm_modules.interop.qwen2 import WINDOWS, Qwen2Family

#: what the qwen3 family represents: LLaMA's fields with per-head QK-norm and Qwen2's windows
FIELDS = {
    **llama.FIELDS,
    **WINDOWS,
    "d_model": Mapped("hidden_size"),
    "qk_norm": Fixed("head"),
    "activation": Activation(llama._GATED, d_ff=ANY, bias=False, dropout=ANY),
}


@HF_FAMILIES.register("qwen3")
class Qwen3Family(Qwen2Family):
    """Qwen3 dense models (``Qwen3ForCausalLM``)."""

    model_type, fields, architecture = "qwen3", FIELDS, "Qwen3ForCausalLM"
    defaults = {**QWEN2_DEFAULTS, "head_dim": 128}

    def llama_keys(self, hf: dict[str, Any]) -> dict[str, Any]:
        """attention_bias is Qwen3's (all four projections, the LLaMA reader's ``bias``); the MLP has none."""
        return {**hf, "attention_bias": bool(hf.get("attention_bias", False)), "mlp_bias": False}

    def own_fields(self, hf: dict[str, Any]) -> dict[str, Any]:
        return {"qk_norm": "head"}

    def config_to_hf(self, config: ModelConfig) -> dict[str, Any]:
        return {**super().config_to_hf(config), "attention_bias": config.bias}
