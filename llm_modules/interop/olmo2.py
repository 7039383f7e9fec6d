"""Hugging Face OLMo 2 family (``model_type: olmo2``): a LLaMA-like decoder whose norms sit after each
sublayer (``x + norm(f(x))``: our ``post_sublayer`` residual) and whose queries and keys are
RMS-normalized over the whole projection before the rotation (``qk_norm: all``); SwiGLU without
biases, RoPE, GQA, an untied head.
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
from llm_modules.interop.llama import _GATED
from llm_modules.interop.rope import rope_from_hf
from llm_modules.interop.slots import activation_from_hf, activation_to_hf, ffn_hidden
from llm_modules.interop.weights import Map, StateDict, WeightTable
from llm_modules.registry import ConfigError

#: what the olmo2 family represents: every ModelConfig field (``allow``)
FIELDS = {
    **sizes("hidden_size", "num_hidden_layers", "num_attention_heads"),
    **RUN_SETTINGS,
    **FEATURES_OFF,
    **DECODER_HEAD,
    "n_kv_heads": Mapped("num_key_value_heads"),
    "head_dim": Check(lambda c: c.dim_per_head * c.n_heads == c.d_model, "head_dim = d_model / n_heads",
                      lambda c, f: f"head_dim={c.dim_per_head} with d_model={c.d_model}, n_heads={c.n_heads}"),
    "d_ff": Mapped("intermediate_size"),
    "max_seq_len": Mapped("max_position_embeddings"),
    "norm": Slot("rmsnorm", eps=ANY),
    "norm_eps": Mapped("rms_norm_eps"),
    "residual": Slot("post_sublayer"),
    "qk_norm": Fixed("all"),
    # the feed-forward never has biases; attention_bias is q/k/v and the output's
    "activation": Activation(_GATED, d_ff=ANY, bias=False, dropout=ANY),
    "position": Slot("rope", theta=ANY, fraction=1.0, interleaved=False, scaling=ANY, local_theta=None,
                      longrope_recompute=False),
    "bias": Mapped("attention_bias"),
    "dropout": Ignored("OLMo 2 has no hidden-state dropout, and dropout is off at inference"),
    "attention_dropout": Mapped("attention_dropout"),
    "attention_scale": SCALED_ATTENTION,
    "tie_embeddings": Mapped("tie_word_embeddings"),
    "embedding_norm": Fixed(False),
    "init_std": Mapped("initializer_range"),
}


@HF_FAMILIES.register("olmo2")
class Olmo2Family(HFFamily):
    """OLMo 2 decoders (``Olmo2ForCausalLM``)."""

    model_type, kind, kind_words, fields = "olmo2", "CausalLM", "a causal decoder", FIELDS

    def config_from_hf(self, hf: dict[str, Any]) -> ModelConfig:
        d_model, n_heads = hf["hidden_size"], hf["num_attention_heads"]
        if hf.get("head_dim") not in (None, d_model // n_heads):
            raise ConfigError(f"olmo2 config.json: head_dim={hf['head_dim']!r} differs from hidden_size / "
                              f"num_attention_heads = {d_model // n_heads}, which the olmo2 family does not map; "
                              "remove head_dim or use a model without it")
        attention_bias = bool(hf.get("attention_bias", False))
        return ModelConfig(
            **llama_fields_from_hf(hf, max_seq_len=2048, norm_eps=1e-5),
            d_ff=hf["intermediate_size"],
            norm="rmsnorm",
            residual="post_sublayer",
            qk_norm="all",
            activation=activation_from_hf(hf.get("hidden_act", "silu"), _GATED, "olmo2",
                                          **({"bias": False} if attention_bias else {})),
            position=rope_from_hf(hf, "olmo2"),
            bias=attention_bias,
        )

    def refine_config(self, config: ModelConfig, weights: StateDict) -> ModelConfig:
        return untie_if_head_differs(config, weights, "embed_tokens.weight", ("model.", ""))

    def config_to_hf(self, config: ModelConfig) -> dict[str, Any]:
        return {
            **llama_hf_fields(config, "olmo2", "Olmo2ForCausalLM", head_dim=False),
            "intermediate_size": ffn_hidden(config, gated=True),
            "hidden_act": activation_to_hf(config, _GATED),
            "attention_bias": config.bias,
        }

    def weight_table(self, config: ModelConfig) -> WeightTable:
        ours, theirs = "stack.layers.{i}", "model.layers.{i}"
        layer = (
            *(m for a in "qkvo" for m in linear(f"{ours}.attn.{a}", f"{theirs}.self_attn.{a}_proj", config.bias)),
            Map(f"{ours}.attn.q_norm.weight", f"{theirs}.self_attn.q_norm.weight"),
            Map(f"{ours}.attn.k_norm.weight", f"{theirs}.self_attn.k_norm.weight"),
            Map(f"{ours}.residual.norms.0.weight", f"{theirs}.post_attention_layernorm.weight"),
            Map(f"{ours}.residual.norms.1.weight", f"{theirs}.post_feedforward_layernorm.weight"),
            *(Map(f"{ours}.ffn.{a}.weight", f"{theirs}.mlp.{a}_proj.weight") for a in ("gate", "up", "down")),
        )
        return llama_layout("olmo2", config, layer)
