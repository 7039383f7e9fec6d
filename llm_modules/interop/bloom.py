"""Hugging Face BLOOM family (``model_type: bloom``): LayerNorm on the embeddings, pre-norm, ALiBi,
GELU (tanh) 4d MLP, biases everywhere, tied head.

BLOOM fuses query, key and value in ``query_key_value``, whose output rows are grouped per head:
(n_heads, 3, head_dim), i.e. q, k, v of head 0, then of head 1, ... (not [q | k | v] as in GPT-2).
"""

from __future__ import annotations

from typing import Any

import torch

from llm_modules.config import ModelConfig
from llm_modules.interop.common import (
    HFTensors,
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

#: BLOOM has no maximum length of its own (ALiBi extrapolates); it was trained on 2048 tokens.
DEFAULT_MAX_SEQ_LEN = 2048


@HF_FAMILIES.register("bloom")
class BloomFamily(HFFamily):
    """BLOOM-style decoders (``BloomForCausalLM``)."""

    kind = CausalLM

    def config_from_hf(self, hf: dict[str, Any]) -> ModelConfig:
        if hf.get("apply_residual_connection_post_layernorm", False):
            raise ConfigError(
                "bloom config.json: apply_residual_connection_post_layernorm=true (the residual taken after "
                "the norm) is not supported; only the standard pre-norm BLOOM layout is"
            )
        vocab = hf["vocab_size"]
        d_model = hf_value(hf, "hidden_size", "n_embed")
        return ModelConfig(
            vocab_size=vocab,
            d_model=d_model,
            n_layers=hf_value(hf, "n_layer", "num_hidden_layers"),
            n_heads=hf_value(hf, "n_head", "num_attention_heads"),
            d_ff=4 * d_model,
            norm="layernorm",
            residual="pre",
            activation={"name": "gelu", "approximate": "tanh"},
            position="alibi",
            bias=True,
            embedding_norm=True,
            max_seq_len=hf_value(hf, "seq_length", default=DEFAULT_MAX_SEQ_LEN),
            norm_eps=hf.get("layer_norm_epsilon", 1e-5),
            dropout=float(hf.get("hidden_dropout", 0.0)),
            attention_dropout=float(hf.get("attention_dropout", 0.0)),
            tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
            init_std=hf.get("initializer_range", 0.02),
            pad_token_id=pad_token(hf, vocab),
        )

    def refine_config(self, config: ModelConfig, weights: StateDict) -> ModelConfig:
        return untie_if_head_differs(config, weights, "word_embeddings.weight", ("transformer.", ""))

    def weights_from_hf(self, weights: StateDict, config: ModelConfig) -> StateDict:
        hf = HFTensors(weights, "bloom", prefixes=("transformer.", ""))
        embedding = hf.take("word_embeddings.weight")
        state = {"embed.tokens.weight": embedding}
        for ours, theirs in _OUTER_NORMS:
            for p in ("weight", "bias"):
                state[f"{ours}.{p}"] = hf.take(f"{theirs}.{p}")
        for i in range(config.n_layers):
            state.update(_layer_from_hf(hf, i, config))
        tie_head(state, config, hf, embedding, "lm_head.weight")
        hf.check_all_used()
        return state

    def mismatches(self, config: ModelConfig, kind: type[LanguageModel]) -> list[str]:
        problems = decoder_mismatches(config, kind, "bloom")
        problems += full_heads_mismatches(config, "bloom")
        problems += require(config, "norm", "bloom", ["layernorm"], bias=True)
        problems += require(config, "position", "bloom", ["alibi"])
        problems += require(config, "activation", "bloom", ["gelu"], approximate="tanh", bias=True)
        if not config.bias:
            problems.append("bias=False (the bloom family has biases on every projection)")
        if ffn_hidden(config, gated=False) != 4 * config.d_model:
            problems.append(
                f"d_ff={ffn_hidden(config, gated=False)} (the bloom family has d_ff = 4 * d_model = {4 * config.d_model})"
            )
        if not config.embedding_norm:
            problems.append("embedding_norm=False (the bloom family normalizes the embeddings)")
        if not default_attention_scale(config):
            problems.append(f"attention_scale={config.attention_scale} (the bloom family uses 1/sqrt(head_dim))")
        return problems

    def config_to_hf(self, config: ModelConfig) -> dict[str, Any]:
        return {
            "model_type": "bloom",
            "architectures": ["BloomForCausalLM"],
            "vocab_size": config.vocab_size,
            "hidden_size": config.d_model,
            "n_layer": config.n_layers,
            "n_head": config.n_heads,
            "layer_norm_epsilon": component(config, "norm")[1]["eps"],
            "apply_residual_connection_post_layernorm": False,
            "hidden_dropout": config.dropout,
            "attention_dropout": config.attention_dropout,
            # Not read by transformers; kept so a round trip remembers the length the model was meant for.
            "seq_length": config.max_seq_len,
            **decoder_hf_fields(config),
        }

    def weights_to_hf(self, state: StateDict, config: ModelConfig) -> StateDict:
        out = {"transformer.word_embeddings.weight": state["embed.tokens.weight"]}
        for ours, theirs in _OUTER_NORMS:
            for p in ("weight", "bias"):
                out[f"transformer.{theirs}.{p}"] = state[f"{ours}.{p}"]
        for i in range(config.n_layers):
            out.update(_layer_to_hf(state, i, config))
        if not config.tie_embeddings:
            out["lm_head.weight"] = state["head.proj.weight"]
        return out


_OUTER_NORMS = (("stack.embedding_norm", "word_embeddings_layernorm"), ("stack.final_norm", "ln_f"))
#: (our module, HF module) pairs copied as they are, weight and bias
_ONE_TO_ONE = (
    ("attn.o", "self_attention.dense"),
    ("ffn.up", "mlp.dense_h_to_4h"),
    ("ffn.down", "mlp.dense_4h_to_h"),
    ("residual.norms.0", "input_layernorm"),
    ("residual.norms.1", "post_attention_layernorm"),
)


def _split_qkv(fused: torch.Tensor, n_heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """BLOOM's fused (3d, ...) weight or (3d,) bias -> q, k, v, each (d, ...) / (d,)."""
    per_head = fused.unflatten(0, (n_heads, 3, -1))  # (heads, 3, head_dim, ...)
    return tuple(per_head[:, j].flatten(0, 1) for j in range(3))


def _fuse_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Inverse of ``_split_qkv``."""
    return torch.stack([t.unflatten(0, (n_heads, -1)) for t in (q, k, v)], dim=1).flatten(0, 2)


def _layer_from_hf(hf: HFTensors, i: int, config: ModelConfig) -> StateDict:
    ours, theirs = f"stack.layers.{i}", f"h.{i}"
    state: StateDict = {}
    for p in ("weight", "bias"):
        fused = hf.take(f"{theirs}.self_attention.query_key_value.{p}")
        for name, part in zip("qkv", _split_qkv(fused, config.n_heads)):
            state[f"{ours}.attn.{name}.{p}"] = part
        for a, b in _ONE_TO_ONE:
            state[f"{ours}.{a}.{p}"] = hf.take(f"{theirs}.{b}.{p}")
    return state


def _layer_to_hf(state: StateDict, i: int, config: ModelConfig) -> StateDict:
    ours, theirs = f"stack.layers.{i}", f"transformer.h.{i}"
    out: StateDict = {}
    for p in ("weight", "bias"):
        q, k, v = (state[f"{ours}.attn.{n}.{p}"] for n in "qkv")
        out[f"{theirs}.self_attention.query_key_value.{p}"] = _fuse_qkv(q, k, v, config.n_heads)
        for a, b in _ONE_TO_ONE:
            out[f"{theirs}.{b}.{p}"] = state[f"{ours}.{a}.{p}"]
    return out
