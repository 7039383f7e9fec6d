"""Hugging Face LLaMA family (``model_type: llama``): RMSNorm, pre-norm, SwiGLU, RoPE, no biases, GQA.

Positions: ours count real tokens (attention-mask cumsum), transformers' default is 0..T-1, so the
two agree on right-padded batches; with left padding pass ``position_ids`` to transformers.
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
    linear,
    llama_fields_from_hf,
    llama_hf_fields,
    llama_layout,
    sizes,
    untie_if_head_differs,
)
from llm_modules.interop.family import HF_FAMILIES, HFFamily
from llm_modules.interop.rope import rope_from_hf
from llm_modules.interop.slots import activation_from_hf, activation_to_hf, component, ffn_hidden
from llm_modules.interop.weights import Map, StateDict, WeightTable, rotary_halves
from llm_modules.registry import ConfigError

_GATED = {
    "silu": ("swiglu", {}),
    "swish": ("swiglu", {}),
    "gelu": ("geglu", {"approximate": "none"}),
    "gelu_pytorch_tanh": ("geglu", {"approximate": "tanh"}),
    "gelu_new": ("geglu", {"approximate": "tanh"}),
    "relu": ("reglu", {}),
}

#: what the llama family represents: every ModelConfig field (``allow``)
FIELDS = {
    **sizes("hidden_size", "num_hidden_layers", "num_attention_heads"),
    **RUN_SETTINGS,
    **FEATURES_OFF,
    **DECODER_HEAD,
    "d_model": Check(lambda c: c.d_model % c.n_heads == 0,
                     "d_model a multiple of n_heads (transformers' LlamaConfig refuses others even with head_dim set)"),
    "n_kv_heads": Mapped("num_key_value_heads"),
    "head_dim": Mapped("head_dim"),
    "d_ff": Mapped("intermediate_size"),
    "max_seq_len": Mapped("max_position_embeddings"),
    "norm": Slot("rmsnorm", eps=ANY),
    "norm_eps": Mapped("rms_norm_eps"),
    "residual": Slot("pre"),
    "activation": Activation(_GATED, d_ff=ANY, bias=ANY, dropout=ANY),
    # interleaved rotary pairs export with q/k rows permuted into LLaMA's halves (weight_table)
    "position": Slot("rope", theta=ANY, fraction=1.0, interleaved=ANY, scaling=ANY, local_theta=None,
                     longrope_recompute=False),
    "bias": Mapped("attention_bias"),
    "dropout": Ignored("LLaMA has no hidden-state dropout, and dropout is off at inference"),
    "attention_dropout": Mapped("attention_dropout"),
    "attention_scale": SCALED_ATTENTION,
    "tie_embeddings": Mapped("tie_word_embeddings"),
    "embedding_norm": Fixed(False),
    "init_std": Mapped("initializer_range"),
}


def llama_rope(hf: dict[str, Any], family: str = "llama") -> dict[str, Any]:
    """LLaMA's RoPE: plain or scaled, always over the whole head (transformers' LLaMA ignores a
    partial_rotary_factor for plain RoPE and cannot apply one with scaling, so one is refused)."""
    spec = rope_from_hf(hf, family)
    if "fraction" in spec:
        raise ConfigError(f"{family} config.json: partial_rotary_factor={spec['fraction']} is not supported (the "
                          f"{family} family rotates whole heads); remove it from config.json")
    return spec


@HF_FAMILIES.register("llama")
class LlamaFamily(HFFamily):
    """LLaMA / LLaMA-2 / LLaMA-3-style decoders (``LlamaForCausalLM``)."""

    model_type, kind, kind_words, fields = "llama", "CausalLM", "a causal decoder", FIELDS

    def config_from_hf(self, hf: dict[str, Any]) -> ModelConfig:
        attention_bias, mlp_bias = bool(hf.get("attention_bias", False)), bool(hf.get("mlp_bias", False))
        return ModelConfig(
            **llama_fields_from_hf(hf, max_seq_len=2048, norm_eps=1e-6),
            d_ff=hf["intermediate_size"],
            norm="rmsnorm",
            residual="pre",
            activation=activation_from_hf(
                hf.get("hidden_act", "silu"), _GATED, self.model_type,
                **({"bias": mlp_bias} if mlp_bias != attention_bias else {}),
            ),
            position=llama_rope(hf, self.model_type),
            bias=attention_bias,
        )

    def refine_config(self, config: ModelConfig, weights: StateDict) -> ModelConfig:
        return untie_if_head_differs(config, weights, "embed_tokens.weight", ("model.", ""))

    def config_to_hf(self, config: ModelConfig) -> dict[str, Any]:
        return {
            **llama_hf_fields(config, "llama", "LlamaForCausalLM"),
            "intermediate_size": ffn_hidden(config, gated=True),
            "hidden_act": activation_to_hf(config, _GATED),
            "attention_bias": config.bias,
            "mlp_bias": bool(component(config, "activation")[1]["bias"]),
        }

    def weight_table(self, config: ModelConfig) -> WeightTable:
        attn_bias, mlp_bias = config.bias, bool(component(config, "activation")[1]["bias"])
        interleaved = component(config, "position")[1]["interleaved"]
        heads = {"q": config.n_heads, "k": config.kv_heads}
        ours, theirs = "stack.layers.{i}", "model.layers.{i}"
        layer = (
            Map(f"{ours}.residual.norms.0.weight", f"{theirs}.input_layernorm.weight"),
            Map(f"{ours}.residual.norms.1.weight", f"{theirs}.post_attention_layernorm.weight"),
            *(m for a in "qkvo" for m in linear(
                f"{ours}.attn.{a}", f"{theirs}.self_attn.{a}_proj", attn_bias,
                **({"transform": rotary_halves(heads[a])} if interleaved and a in heads else {}))),
            *(m for a in ("gate", "up", "down") for m in linear(f"{ours}.ffn.{a}", f"{theirs}.mlp.{a}_proj", mlp_bias)),
        )
        return llama_layout("llama", config, layer)
