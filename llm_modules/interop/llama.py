"""Hugging Face LLaMA family (``model_type: llama``): RMSNorm, pre-norm, SwiGLU, RoPE, no biases, GQA.

Positions: ours count real tokens (attention-mask cumsum), transformers' default is 0..T-1, so the
two agree on right-padded batches; with left padding pass ``position_ids`` to transformers.
"""

from __future__ import annotations

from typing import Any

from llm_modules.config import ModelConfig
from llm_modules.interop.common import (
    HFTensors,
    activation_from_hf,
    activation_to_hf,
    component,
    decoder_hf_fields,
    decoder_mismatches,
    default_attention_scale,
    ffn_hidden,
    pad_token,
    require,
    tie_head,
    untie_if_head_differs,
)
from llm_modules.interop.family import HF_FAMILIES, HFFamily, StateDict
from llm_modules.models import CausalLM, LanguageModel
from llm_modules.registry import ConfigError

_GATED = {
    "silu": ("swiglu", {}),
    "swish": ("swiglu", {}),
    "gelu": ("geglu", {"approximate": "none"}),
    "gelu_pytorch_tanh": ("geglu", {"approximate": "tanh"}),
    "gelu_new": ("geglu", {"approximate": "tanh"}),
    "relu": ("reglu", {}),
}


def rope_theta_from_hf(hf: dict[str, Any]) -> float:
    """RoPE base from ``rope_parameters`` (transformers 5) or ``rope_theta`` + ``rope_scaling`` (older).

    Only plain RoPE is representable; scaled variants (linear, dynamic, yarn, llama3, ...) change
    the frequencies in ways our RoPE does not, so they are refused rather than silently dropped.
    """
    params = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type != "default":
        raise ConfigError(
            f"llama config.json: rope type {rope_type!r} is not supported (only plain RoPE, rope_type 'default'); "
            "remove the rope scaling from config.json or use a model without it"
        )
    return float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))


@HF_FAMILIES.register("llama")
class LlamaFamily(HFFamily):
    """LLaMA / LLaMA-2 / LLaMA-3-style decoders (``LlamaForCausalLM``)."""

    kind = CausalLM

    def config_from_hf(self, hf: dict[str, Any]) -> ModelConfig:
        d_model, n_heads = hf["hidden_size"], hf["num_attention_heads"]
        head_dim = hf.get("head_dim")
        attention_bias, mlp_bias = bool(hf.get("attention_bias", False)), bool(hf.get("mlp_bias", False))
        return ModelConfig(
            vocab_size=hf["vocab_size"],
            d_model=d_model,
            n_layers=hf["num_hidden_layers"],
            n_heads=n_heads,
            n_kv_heads=hf.get("num_key_value_heads") or n_heads,
            d_ff=hf["intermediate_size"],
            head_dim=None if head_dim in (None, d_model // n_heads) else head_dim,
            norm="rmsnorm",
            residual="pre",
            activation=activation_from_hf(
                hf.get("hidden_act", "silu"), _GATED, "llama", **({"bias": mlp_bias} if mlp_bias != attention_bias else {})
            ),
            position={"name": "rope", "theta": rope_theta_from_hf(hf)},
            bias=attention_bias,
            max_seq_len=hf.get("max_position_embeddings", 2048),
            norm_eps=hf.get("rms_norm_eps", 1e-6),
            attention_dropout=float(hf.get("attention_dropout") or 0.0),
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
            init_std=hf.get("initializer_range", 0.02),
            pad_token_id=pad_token(hf, hf["vocab_size"]),
        )

    def refine_config(self, config: ModelConfig, weights: StateDict) -> ModelConfig:
        return untie_if_head_differs(config, weights, "embed_tokens.weight", ("model.", ""))

    def weights_from_hf(self, weights: StateDict, config: ModelConfig) -> StateDict:
        hf = HFTensors(weights, "llama", prefixes=("model.", ""), ignorable=("rotary_emb.inv_freq",))
        embedding = hf.take("embed_tokens.weight")
        state = {"embed.tokens.weight": embedding, "stack.final_norm.weight": hf.take("norm.weight")}
        for i in range(config.n_layers):
            for ours, theirs in _llama_layer_names(i, config):
                state[ours] = hf.take(theirs)
        tie_head(state, config, hf, embedding, "lm_head.weight")
        hf.check_all_used()
        return state

    def mismatches(self, config: ModelConfig, kind: type[LanguageModel]) -> list[str]:
        problems = decoder_mismatches(config, kind, "llama")
        problems += require(config, "norm", "llama", ["rmsnorm"])
        problems += require(config, "position", "llama", ["rope"], fraction=1.0, interleaved=False)
        if activation_to_hf(config, _GATED) is None:
            problems.append(
                f"activation {component(config, 'activation')[0]!r} (the llama family has swiglu, geglu or reglu)"
            )
        if config.embedding_norm:
            problems.append("embedding_norm=True (the llama family has no embedding norm)")
        if not default_attention_scale(config):
            problems.append(f"attention_scale={config.attention_scale} (the llama family uses 1/sqrt(head_dim))")
        if config.d_model % config.n_heads:
            problems.append(
                f"d_model={config.d_model} is not a multiple of n_heads={config.n_heads} "
                "(transformers' LlamaConfig refuses that even with head_dim set)"
            )
        return problems

    def config_to_hf(self, config: ModelConfig) -> dict[str, Any]:
        theta = float(component(config, "position")[1]["theta"])
        return {
            "model_type": "llama",
            "architectures": ["LlamaForCausalLM"],
            "vocab_size": config.vocab_size,
            "hidden_size": config.d_model,
            "intermediate_size": ffn_hidden(config, gated=True),
            "num_hidden_layers": config.n_layers,
            "num_attention_heads": config.n_heads,
            "num_key_value_heads": config.kv_heads,
            "head_dim": config.dim_per_head,
            "hidden_act": activation_to_hf(config, _GATED),
            "max_position_embeddings": config.max_seq_len,
            "rms_norm_eps": component(config, "norm")[1]["eps"],
            # transformers 5 reads rope_parameters; older versions read rope_theta.
            "rope_parameters": {"rope_type": "default", "rope_theta": theta},
            "rope_theta": theta,
            "attention_bias": config.bias,
            "mlp_bias": bool(component(config, "activation")[1]["bias"]),
            "attention_dropout": config.attention_dropout,
            **decoder_hf_fields(config),
        }

    def weights_to_hf(self, state: StateDict, config: ModelConfig) -> StateDict:
        out = {"model.embed_tokens.weight": state["embed.tokens.weight"], "model.norm.weight": state["stack.final_norm.weight"]}
        for i in range(config.n_layers):
            for ours, theirs in _llama_layer_names(i, config):
                out["model." + theirs] = state[ours]
        if not config.tie_embeddings:
            out["lm_head.weight"] = state["head.proj.weight"]
        return out


def _llama_layer_names(i: int, config: ModelConfig) -> list[tuple[str, str]]:
    """(our name, HF name without the ``model.`` prefix) for every tensor of layer ``i``."""
    ours, theirs = f"stack.layers.{i}", f"layers.{i}"
    pairs = [
        (f"{ours}.residual.norms.0.weight", f"{theirs}.input_layernorm.weight"),
        (f"{ours}.residual.norms.1.weight", f"{theirs}.post_attention_layernorm.weight"),
    ]
    attn_bias = config.bias
    for a, b in (("q", "q_proj"), ("k", "k_proj"), ("v", "v_proj"), ("o", "o_proj")):
        pairs.append((f"{ours}.attn.{a}.weight", f"{theirs}.self_attn.{b}.weight"))
        if attn_bias:
            pairs.append((f"{ours}.attn.{a}.bias", f"{theirs}.self_attn.{b}.bias"))
    mlp_bias = component(config, "activation")[1]["bias"]
    for a, b in (("gate", "gate_proj"), ("up", "up_proj"), ("down", "down_proj")):
        pairs.append((f"{ours}.ffn.{a}.weight", f"{theirs}.mlp.{b}.weight"))
        if mlp_bias:
            pairs.append((f"{ours}.ffn.{a}.bias", f"{theirs}.mlp.{b}.bias"))
    return pairs
