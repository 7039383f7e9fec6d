"""Hugging Face GPT-2 family (``model_type: gpt2``): LayerNorm, pre-norm, GELU (tanh) MLP, learned
absolute positions, biases everywhere, tied head.

GPT-2 stores its projections as ``Conv1D``: weights are (in, out), the transpose of ``nn.Linear``,
and ``c_attn`` holds query, key and value side by side along the output dimension.
"""

from __future__ import annotations

from typing import Any

import torch

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
    full_heads_mismatches,
    hf_value,
    pad_token,
    require,
    tie_head,
    untie_if_head_differs,
)
from llm_modules.interop.family import HF_FAMILIES, HFFamily, StateDict
from llm_modules.models import CausalLM, LanguageModel
from llm_modules.registry import ConfigError

#: HF ``activation_function`` -> our plain feed-forward, and back (the first HF name wins on export)
_ACTIVATIONS = {
    "gelu_new": ("gelu", {"approximate": "tanh"}),
    "gelu_pytorch_tanh": ("gelu", {"approximate": "tanh"}),
    "gelu": ("gelu", {"approximate": "none"}),
    "relu": ("relu", {}),
    "silu": ("swish", {}),
    "swish": ("swish", {}),
}


def _attention_scale_from_hf(hf: dict[str, Any]) -> float | None:
    """None (1/sqrt(head_dim)) or 1.0 when ``scale_attn_weights`` is off; per-layer scaling is refused."""
    if hf.get("scale_attn_by_inverse_layer_idx", False):
        raise ConfigError(
            "gpt2 config.json: scale_attn_by_inverse_layer_idx=true scales each layer differently, "
            "which llm-modules does not represent; set it to false or use another model"
        )
    return None if hf.get("scale_attn_weights", True) else 1.0


@HF_FAMILIES.register("gpt2")
class GPT2Family(HFFamily):
    """GPT-2-style decoders (``GPT2LMHeadModel``)."""

    kind = CausalLM

    def config_from_hf(self, hf: dict[str, Any]) -> ModelConfig:
        if hf.get("add_cross_attention", False):
            raise ConfigError(
                "gpt2 config.json: add_cross_attention=true (a GPT-2 decoder inside an encoder-decoder) "
                "is not supported; use a decoder-only GPT-2 checkpoint"
            )
        d_model = hf_value(hf, "n_embd", "hidden_size")
        vocab = hf["vocab_size"]
        return ModelConfig(
            vocab_size=vocab,
            d_model=d_model,
            n_layers=hf_value(hf, "n_layer", "num_hidden_layers"),
            n_heads=hf_value(hf, "n_head", "num_attention_heads"),
            d_ff=hf_value(hf, "n_inner", default=4 * d_model),
            norm="layernorm",
            residual="pre",
            activation=activation_from_hf(hf.get("activation_function", "gelu_new"), _ACTIVATIONS, "gpt2"),
            position="learned",
            bias=True,
            max_seq_len=hf_value(hf, "n_positions", "max_position_embeddings", default=1024),
            norm_eps=hf.get("layer_norm_epsilon", 1e-5),
            dropout=float(hf.get("resid_pdrop", 0.0)),
            attention_dropout=float(hf.get("attn_pdrop", 0.0)),
            attention_scale=_attention_scale_from_hf(hf),
            tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
            init_std=hf.get("initializer_range", 0.02),
            pad_token_id=pad_token(hf, vocab),
        )

    def refine_config(self, config: ModelConfig, weights: StateDict) -> ModelConfig:
        return untie_if_head_differs(config, weights, "wte.weight", ("transformer.", ""))

    def weights_from_hf(self, weights: StateDict, config: ModelConfig) -> StateDict:
        # Old checkpoints have no "transformer." prefix and carry the causal-mask buffers attn.bias
        # and attn.masked_bias, which are not weights.
        hf = HFTensors(weights, "gpt2", prefixes=("transformer.", ""), ignorable=(".attn.bias", ".attn.masked_bias"))
        embedding = hf.take("wte.weight")
        state = {
            "embed.tokens.weight": embedding,
            "stack.position.table.weight": hf.take("wpe.weight"),
            "stack.final_norm.weight": hf.take("ln_f.weight"),
            "stack.final_norm.bias": hf.take("ln_f.bias"),
        }
        for i in range(config.n_layers):
            state.update(_layer_from_hf(hf, i, config))
        tie_head(state, config, hf, embedding, "lm_head.weight")
        hf.check_all_used()
        return state

    def mismatches(self, config: ModelConfig, kind: type[LanguageModel]) -> list[str]:
        problems = decoder_mismatches(config, kind, "gpt2")
        problems += full_heads_mismatches(config, "gpt2")
        problems += require(config, "norm", "gpt2", ["layernorm"], bias=True)
        problems += require(config, "position", "gpt2", ["learned"])
        if activation_to_hf(config, _ACTIVATIONS) is None:
            problems.append(
                f"activation {component(config, 'activation')[0]!r} (the gpt2 family has gelu, relu or swish)"
            )
        if not config.bias:
            problems.append("bias=False (the gpt2 family has biases on every projection)")
        if not component(config, "activation")[1]["bias"]:
            problems.append("activation bias=False (the gpt2 family has biases on every projection)")
        if config.embedding_norm:
            problems.append("embedding_norm=True (the gpt2 family has no embedding norm)")
        if not (default_attention_scale(config) or config.attention_scale == 1.0):
            problems.append(
                f"attention_scale={config.attention_scale} (the gpt2 family has 1/sqrt(head_dim) or 1.0)"
            )
        return problems

    def config_to_hf(self, config: ModelConfig) -> dict[str, Any]:
        return {
            "model_type": "gpt2",
            "architectures": ["GPT2LMHeadModel"],
            "vocab_size": config.vocab_size,
            "n_positions": config.max_seq_len,
            "n_embd": config.d_model,
            "n_layer": config.n_layers,
            "n_head": config.n_heads,
            "n_inner": ffn_hidden(config, gated=False),
            "activation_function": activation_to_hf(config, _ACTIVATIONS),
            "layer_norm_epsilon": component(config, "norm")[1]["eps"],
            "resid_pdrop": config.dropout,
            "embd_pdrop": config.dropout,
            "attn_pdrop": config.attention_dropout,
            "scale_attn_weights": default_attention_scale(config),
            **decoder_hf_fields(config),
        }

    def weights_to_hf(self, state: StateDict, config: ModelConfig) -> StateDict:
        out = {
            "transformer.wte.weight": state["embed.tokens.weight"],
            "transformer.wpe.weight": state["stack.position.table.weight"],
            "transformer.ln_f.weight": state["stack.final_norm.weight"],
            "transformer.ln_f.bias": state["stack.final_norm.bias"],
        }
        for i in range(config.n_layers):
            out.update(_layer_to_hf(state, i))
        if not config.tie_embeddings:
            out["lm_head.weight"] = state["head.proj.weight"]
        return out


#: (our sublayer, HF Conv1D) pairs that map one to one (weight transposed)
_PROJECTIONS = (("attn.o", "attn.c_proj"), ("ffn.up", "mlp.c_fc"), ("ffn.down", "mlp.c_proj"))
_NORMS = (("residual.norms.0", "ln_1"), ("residual.norms.1", "ln_2"))


def _layer_from_hf(hf: HFTensors, i: int, config: ModelConfig) -> StateDict:
    ours, theirs = f"stack.layers.{i}", f"h.{i}"
    state: StateDict = {}
    # c_attn: weight (d, 3d) = [q | k | v] along the output (last) dim; bias (3d,) likewise.
    weight, bias = hf.take(f"{theirs}.attn.c_attn.weight"), hf.take(f"{theirs}.attn.c_attn.bias")
    for name, w, b in zip("qkv", weight.split(config.d_model, dim=1), bias.split(config.d_model)):
        state[f"{ours}.attn.{name}.weight"] = w.t()
        state[f"{ours}.attn.{name}.bias"] = b
    for a, b in _PROJECTIONS:
        state[f"{ours}.{a}.weight"] = hf.take(f"{theirs}.{b}.weight").t()
        state[f"{ours}.{a}.bias"] = hf.take(f"{theirs}.{b}.bias")
    for a, b in _NORMS:
        for p in ("weight", "bias"):
            state[f"{ours}.{a}.{p}"] = hf.take(f"{theirs}.{b}.{p}")
    return state


def _layer_to_hf(state: StateDict, i: int) -> StateDict:
    ours, theirs = f"stack.layers.{i}", f"transformer.h.{i}"
    out: StateDict = {
        f"{theirs}.attn.c_attn.weight": torch.cat([state[f"{ours}.attn.{n}.weight"].t() for n in "qkv"], dim=1),
        f"{theirs}.attn.c_attn.bias": torch.cat([state[f"{ours}.attn.{n}.bias"] for n in "qkv"]),
    }
    for a, b in _PROJECTIONS:
        out[f"{theirs}.{b}.weight"] = state[f"{ours}.{a}.weight"].t()
        out[f"{theirs}.{b}.bias"] = state[f"{ours}.{a}.bias"]
    for a, b in _NORMS:
        for p in ("weight", "bias"):
            out[f"{theirs}.{b}.{p}"] = state[f"{ours}.{a}.{p}"]
    return out
