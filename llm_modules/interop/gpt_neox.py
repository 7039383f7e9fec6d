"""Hugging Face GPT-NeoX family (``model_type: gpt_neox``: Pythia, GPT-NeoX-20B): LayerNorm, partial
rotary (``partial_rotary_factor``, formerly ``rotary_pct``), attention and feed-forward in parallel
with a norm each (``use_parallel_residual``) or one after the other, biases, an untied head.

``query_key_value`` holds q, k and v grouped per head: rows (n_heads, 3, head_dim), as BLOOM's. The
head is stored as ``embed_out`` (transformers 5 renames it ``lm_head`` when loading; both are read).
"""

from __future__ import annotations

from typing import Any

from llm_modules.config import ModelConfig
from llm_modules.interop.allow import ANY, Activation, Fixed, Mapped, Slot
from llm_modules.interop.common import (
    DECODER_HEAD,
    FEATURES_OFF,
    RUN_SETTINGS,
    SCALED_ATTENTION,
    decoder_hf_fields,
    full_heads,
    pad_token,
    sizes,
    untie_if_head_differs,
)
from llm_modules.interop.family import HF_FAMILIES, HFFamily
from llm_modules.interop.rope import rope_from_hf, rope_to_hf
from llm_modules.interop.slots import activation_from_hf, activation_to_hf, component, ffn_hidden
from llm_modules.interop.weights import Map, Repeat, StateDict, Tied, WeightTable, grouped_per_head
from llm_modules.registry import ConfigError

#: HF activation name -> our plain (two-matrix) feed-forward, the first HF name winning on export; GPT-NeoX,
#: Falcon and OPT share it (exact GELU first: their default)
PLAIN_ACTIVATIONS = {
    "gelu": ("gelu", {"approximate": "none"}),
    "gelu_new": ("gelu", {"approximate": "tanh"}),
    "gelu_pytorch_tanh": ("gelu", {"approximate": "tanh"}),
    "relu": ("relu", {}),
    "silu": ("swish", {}),
    "swish": ("swish", {}),
}

#: what the gpt_neox family represents: every ModelConfig field (``allow``)
FIELDS = {
    **sizes("hidden_size", "num_hidden_layers", "num_attention_heads"),
    **RUN_SETTINGS,
    **FEATURES_OFF,
    **DECODER_HEAD,
    **full_heads(),
    "d_ff": Mapped("intermediate_size"),
    "max_seq_len": Mapped("max_position_embeddings"),
    "norm": Slot("layernorm", eps=ANY, bias=True),
    "norm_eps": Mapped("layer_norm_eps"),
    # use_parallel_residual: attention and feed-forward side by side, each with its own norm
    "residual": Slot(("parallel", "pre"), shared_norm=False),
    # the feed-forward always has biases; attention_bias is q/k/v and the output's
    "activation": Activation(PLAIN_ACTIVATIONS, d_ff=ANY, bias=True, dropout=ANY),
    "position": Slot("rope", theta=ANY, fraction=ANY, interleaved=False, scaling=ANY, local_theta=None,
                      longrope_recompute=False),
    "bias": Mapped("attention_bias"),
    "dropout": Mapped("hidden_dropout"),
    "attention_dropout": Mapped("attention_dropout"),
    "attention_scale": SCALED_ATTENTION,
    "tie_embeddings": Mapped("tie_word_embeddings"),
    "embedding_norm": Fixed(False),
    "init_std": Mapped("initializer_range"),
}


def neox_rope(hf: dict[str, Any]) -> dict[str, Any]:
    """Our RoPE spec: GPT-NeoX's own keys (``rotary_emb_base``, ``rotary_pct``, whose default is 0.25)
    where the standard ones (``rope_theta``, ``partial_rotary_factor``) are absent, as transformers
    reads them."""
    legacy = {}
    if "rotary_emb_base" in hf and "rope_theta" not in hf:
        legacy["rope_theta"] = hf["rotary_emb_base"]
    if "partial_rotary_factor" not in hf:
        legacy["partial_rotary_factor"] = hf.get("rotary_pct", 0.25)
    return rope_from_hf({**hf, **legacy}, "gpt_neox")


def neox_rope_to_hf(config: ModelConfig) -> dict[str, Any]:
    """``rope_to_hf`` with the rotary fraction always written (GPT-NeoX's default is 0.25, not 1), also
    under GPT-NeoX's own keys: with a legacy ``rope_scaling`` present, transformers takes the base
    and the fraction from ``rotary_emb_base`` and ``rotary_pct``, not from ``rope_parameters``."""
    fields = rope_to_hf(config)
    fraction = float(component(config, "position")[1]["fraction"])
    fields["rope_parameters"]["partial_rotary_factor"] = fraction
    fields.update(partial_rotary_factor=fraction, rotary_pct=fraction, rotary_emb_base=fields["rope_theta"])
    return fields


@HF_FAMILIES.register("gpt_neox")
class GPTNeoXFamily(HFFamily):
    """GPT-NeoX-style decoders (``GPTNeoXForCausalLM``: Pythia, GPT-NeoX-20B)."""

    model_type, kind, kind_words, fields = "gpt_neox", "CausalLM", "a causal decoder", FIELDS

    def config_from_hf(self, hf: dict[str, Any]) -> ModelConfig:
        vocab = hf["vocab_size"]
        parallel = bool(hf.get("use_parallel_residual", True))
        # keys transformers' GPT-NeoX does not read: a value other than what it computes is refused
        computed = {"head_dim": hf["hidden_size"] // hf["num_attention_heads"],
                    "num_key_value_heads": hf["num_attention_heads"]}
        for key, value in computed.items():
            if hf.get(key) not in (None, value):
                raise ConfigError(f"gpt_neox config.json: {key}={hf[key]!r} is not read by transformers' GPT-NeoX "
                                  f"(every head has its own key/value of hidden_size / num_attention_heads features, "
                                  f"{key} {value}); remove {key} from config.json")
        return ModelConfig(
            vocab_size=vocab,
            d_model=hf["hidden_size"],
            n_layers=hf["num_hidden_layers"],
            n_heads=hf["num_attention_heads"],
            d_ff=hf["intermediate_size"],
            norm="layernorm",
            residual={"name": "parallel", "shared_norm": False} if parallel else "pre",
            activation=activation_from_hf(hf.get("hidden_act", "gelu"), PLAIN_ACTIVATIONS, "gpt_neox",
                                          **({} if hf.get("attention_bias", True) else {"bias": True})),
            position=neox_rope(hf),
            bias=bool(hf.get("attention_bias", True)),
            max_seq_len=hf.get("max_position_embeddings", 2048),
            norm_eps=hf.get("layer_norm_eps", 1e-5),
            dropout=float(hf.get("hidden_dropout") or 0.0),
            attention_dropout=float(hf.get("attention_dropout") or 0.0),
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
            init_std=hf.get("initializer_range", 0.02),
            pad_token_id=pad_token(hf, vocab),
        )

    def refine_config(self, config: ModelConfig, weights: StateDict) -> ModelConfig:
        for head in ("embed_out.weight", "lm_head.weight"):
            config = untie_if_head_differs(config, weights, "embed_in.weight", ("gpt_neox.", ""), head=head)
        return config

    def config_to_hf(self, config: ModelConfig) -> dict[str, Any]:
        return {
            "model_type": "gpt_neox",
            "architectures": ["GPTNeoXForCausalLM"],
            "vocab_size": config.vocab_size,
            "hidden_size": config.d_model,
            "intermediate_size": ffn_hidden(config, gated=False),
            "num_hidden_layers": config.n_layers,
            "num_attention_heads": config.n_heads,
            "hidden_act": activation_to_hf(config, PLAIN_ACTIVATIONS),
            "max_position_embeddings": config.max_seq_len,
            "layer_norm_eps": component(config, "norm")[1]["eps"],
            "use_parallel_residual": component(config, "residual")[0] == "parallel",
            **neox_rope_to_hf(config),
            "attention_bias": config.bias,
            "hidden_dropout": config.dropout,
            "attention_dropout": config.attention_dropout,
            **decoder_hf_fields(config),
        }

    def weight_table(self, config: ModelConfig) -> WeightTable:
        ours, theirs = "stack.layers.{i}", "gpt_neox.layers.{i}"
        fused = grouped_per_head(config.n_heads)
        attn = ("weight", "bias") if config.bias else ("weight",)
        layer = (
            *(Map(tuple(f"{ours}.attn.{n}.{p}" for n in "qkv"), f"{theirs}.attention.query_key_value.{p}", fused)
              for p in attn),
            *(Map(f"{ours}.attn.o.{p}", f"{theirs}.attention.dense.{p}") for p in attn),
            *(Map(f"{ours}.{a}.{p}", f"{theirs}.{b}.{p}") for a, b in _ONE_TO_ONE for p in ("weight", "bias")),
        )
        head = (Tied("head.proj.weight", "embed.tokens.weight", stored_copy="embed_out.weight")
                if config.tie_embeddings else Map("head.proj.weight", "embed_out.weight",
                                                  read=("embed_out.weight", "lm_head.weight")))
        return WeightTable(
            "gpt_neox",
            (
                Map("embed.tokens.weight", "gpt_neox.embed_in.weight"),
                Map("stack.final_norm.weight", "gpt_neox.final_layer_norm.weight"),
                Map("stack.final_norm.bias", "gpt_neox.final_layer_norm.bias"),
                Repeat(config.n_layers, layer),
                head,
            ),
            prefix="gpt_neox.",
            # old checkpoints carry the causal-mask and rotary buffers
            ignorable=(".attention.bias", ".attention.masked_bias", ".rotary_emb.inv_freq"),
        )


#: (our module, HF module) pairs copied as they are, weight and bias
_ONE_TO_ONE = (
    ("ffn.up", "mlp.dense_h_to_4h"),
    ("ffn.down", "mlp.dense_4h_to_h"),
    ("residual.norms.0", "input_layernorm"),
    ("residual.norms.1", "post_attention_layernorm"),
)
