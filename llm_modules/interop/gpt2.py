"""Hugging Face GPT-2 family (``model_type: gpt2``): LayerNorm, pre-norm, GELU (tanh) MLP, learned
absolute positions, biases everywhere, tied head.

GPT-2 stores its projections as ``Conv1D``: weights are (in, out), the transpose of ``nn.Linear``,
and ``c_attn`` holds query, key and value side by side along the output dimension.
"""

from __future__ import annotations

from typing import Any

from llm_modules.config import ModelConfig
from llm_modules.interop.allow import ANY, Activation, Check, Fixed, Mapped, Slot
from llm_modules.interop.common import (
    DECODER_HEAD,
    FEATURES_OFF,
    RUN_SETTINGS,
    decoder_hf_fields,
    default_attention_scale,
    full_heads,
    head_entry,
    hf_value,
    pad_token,
    sizes,
    untie_if_head_differs,
)
from llm_modules.interop.family import HF_FAMILIES, HFFamily
from llm_modules.interop.slots import activation_from_hf, activation_to_hf, component, ffn_hidden
from llm_modules.interop.weights import TRANSPOSE, Map, Repeat, StateDict, WeightTable, side_by_side
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

#: what the gpt2 family represents: every ModelConfig field (``allow``)
FIELDS = {
    **sizes("n_embd", "n_layer", "n_head"),
    **RUN_SETTINGS,
    **FEATURES_OFF,
    **DECODER_HEAD,
    **full_heads(),
    "d_ff": Mapped("n_inner"),
    "max_seq_len": Mapped("n_positions"),
    "norm": Slot("layernorm", eps=ANY, bias=True),
    "norm_eps": Mapped("layer_norm_epsilon"),
    "residual": Slot("pre"),
    "activation": Activation(_ACTIVATIONS, d_ff=ANY, bias=True, dropout=ANY),
    "position": Slot("learned", offset=0),
    "bias": Fixed(True),
    "dropout": Mapped("resid_pdrop"),
    "attention_dropout": Mapped("attn_pdrop"),
    "attention_scale": Check(lambda c: default_attention_scale(c) or c.attention_scale == 1.0,
                             "1/sqrt(head_dim) or 1.0 (scale_attn_weights)"),
    "tie_embeddings": Mapped("tie_word_embeddings"),
    "embedding_norm": Fixed(False),
    "init_std": Mapped("initializer_range"),
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

    model_type, kind, kind_words, fields = "gpt2", "CausalLM", "a causal decoder", FIELDS

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

    def weight_table(self, config: ModelConfig) -> WeightTable:
        ours, theirs = "stack.layers.{i}", "transformer.h.{i}"
        layer = (
            # c_attn: weight (d, 3d) = [q | k | v] along the output (last) dim; bias (3d,) likewise.
            Map(tuple(f"{ours}.attn.{n}.weight" for n in "qkv"), f"{theirs}.attn.c_attn.weight",
                side_by_side(3, dim=1, transpose=True)),
            Map(tuple(f"{ours}.attn.{n}.bias" for n in "qkv"), f"{theirs}.attn.c_attn.bias", side_by_side(3, dim=0)),
            *(m for a, b in _PROJECTIONS for m in (Map(f"{ours}.{a}.weight", f"{theirs}.{b}.weight", TRANSPOSE),
                                                    Map(f"{ours}.{a}.bias", f"{theirs}.{b}.bias"))),
            *(Map(f"{ours}.{a}.{p}", f"{theirs}.{b}.{p}") for a, b in _NORMS for p in ("weight", "bias")),
        )
        return WeightTable(
            "gpt2",
            (
                Map("embed.tokens.weight", "transformer.wte.weight"),
                Map("stack.position.table.weight", "transformer.wpe.weight"),
                Map("stack.final_norm.weight", "transformer.ln_f.weight"),
                Map("stack.final_norm.bias", "transformer.ln_f.bias"),
                Repeat(config.n_layers, layer),
                head_entry(config),
            ),
            prefix="transformer.",
            # old checkpoints carry the causal-mask buffers attn.bias and attn.masked_bias
            ignorable=(".attn.bias", ".attn.masked_bias"),
        )


#: (our sublayer, HF Conv1D) pairs that map one to one (weight transposed)
_PROJECTIONS = (("attn.o", "attn.c_proj"), ("ffn.up", "mlp.c_fc"), ("ffn.down", "mlp.c_proj"))
_NORMS = (("residual.norms.0", "ln_1"), ("residual.norms.1", "ln_2"))
