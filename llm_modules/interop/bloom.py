"""Hugging Face BLOOM family (``model_type: bloom``): LayerNorm on the embeddings, pre-norm, ALiBi,
GELU (tanh) 4d MLP, biases everywhere, tied head.

BLOOM fuses query, key and value in ``query_key_value``, whose output rows are grouped per head:
(n_heads, 3, head_dim), i.e. q, k, v of head 0, then of head 1, ... (not [q | k | v] as in GPT-2).
"""

from __future__ import annotations

from typing import Any

from llm_modules.config import ModelConfig
from llm_modules.interop.allow import ANY, Check, Fixed, Mapped, Slot
from llm_modules.interop.common import (
    DECODER_HEAD,
    FEATURES_OFF,
    RUN_SETTINGS,
    SCALED_ATTENTION,
    decoder_hf_fields,
    full_heads,
    head_entry,
    hf_value,
    pad_token,
    sizes,
    untie_if_head_differs,
)
from llm_modules.interop.family import HF_FAMILIES, HFFamily
from llm_modules.interop.slots import component, ffn_hidden
from llm_modules.interop.weights import Map, Repeat, StateDict, WeightTable, grouped_per_head
from llm_modules.registry import ConfigError

#: BLOOM has no maximum length of its own (ALiBi extrapolates); it was trained on 2048 tokens.
DEFAULT_MAX_SEQ_LEN = 2048

#: what the bloom family represents: every ModelConfig field (``allow``)
FIELDS = {
    **sizes("hidden_size", "n_layer", "n_head"),
    **RUN_SETTINGS,
    **FEATURES_OFF,
    **DECODER_HEAD,
    **full_heads(),
    "d_ff": Check(lambda c: ffn_hidden(c, gated=False) == 4 * c.d_model, "d_ff = 4 * d_model",
                  lambda c, f: f"d_ff={ffn_hidden(c, gated=False)} with d_model={c.d_model}"),
    "max_seq_len": Mapped("seq_length"),
    "norm": Slot("layernorm", eps=ANY, bias=True),
    "norm_eps": Mapped("layer_norm_epsilon"),
    "residual": Slot("pre"),
    "activation": Slot("gelu", approximate="tanh", d_ff=ANY, bias=True, dropout=ANY),
    "position": Slot("alibi"),
    "bias": Fixed(True),
    "dropout": Mapped("hidden_dropout"),
    "attention_dropout": Mapped("attention_dropout"),
    "attention_scale": SCALED_ATTENTION,
    "tie_embeddings": Mapped("tie_word_embeddings"),
    "embedding_norm": Fixed(True),
    "init_std": Mapped("initializer_range"),
}


@HF_FAMILIES.register("bloom")
class BloomFamily(HFFamily):
    """BLOOM-style decoders (``BloomForCausalLM``)."""

    model_type, kind, kind_words, fields = "bloom", "CausalLM", "a causal decoder", FIELDS

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

    def weight_table(self, config: ModelConfig) -> WeightTable:
        ours, theirs = "stack.layers.{i}", "transformer.h.{i}"
        fused = grouped_per_head(config.n_heads)
        layer = tuple(
            m
            for p in ("weight", "bias")
            for m in (
                Map(tuple(f"{ours}.attn.{n}.{p}" for n in "qkv"), f"{theirs}.self_attention.query_key_value.{p}", fused),
                *(Map(f"{ours}.{a}.{p}", f"{theirs}.{b}.{p}") for a, b in _ONE_TO_ONE),
            )
        )
        return WeightTable(
            "bloom",
            (
                Map("embed.tokens.weight", "transformer.word_embeddings.weight"),
                *(Map(f"{a}.{p}", f"transformer.{b}.{p}") for a, b in _OUTER_NORMS for p in ("weight", "bias")),
                Repeat(config.n_layers, layer),
                head_entry(config),
            ),
            prefix="transformer.",
        )


_OUTER_NORMS = (("stack.embedding_norm", "word_embeddings_layernorm"), ("stack.final_norm", "ln_f"))
#: (our module, HF module) pairs copied as they are, weight and bias
_ONE_TO_ONE = (
    ("attn.o", "self_attention.dense"),
    ("ffn.up", "mlp.dense_h_to_4h"),
    ("ffn.down", "mlp.dense_4h_to_h"),
    ("residual.norms.0", "input_layernorm"),
    ("residual.norms.1", "post_attention_layernorm"),
)
