"""Hugging Face T5 family (``model_type: t5``: T5, T5 v1.1, Flan-T5, ...) <-> ``Seq2SeqLM``.

T5 is a pre-norm encoder-decoder with RMS norms, no biases anywhere, unscaled attention scores and
a learned relative-position bias: one bucket table per stack (HF keeps it in the stack's first
block), bidirectional in the encoder, causal in the decoder, none in cross-attention.

Two head styles exist. The original T5 ties the head to the shared embedding and multiplies the
decoder output by d_model**-0.5 first (our ``output_scale``); v1.1 has its own head and no scale.
Transformers 5 keeps the scale as ``scale_decoder_outputs`` and always ties the head unless the
checkpoint holds a different ``lm_head.weight``; older versions derive both from
``tie_word_embeddings``. Import follows transformers 5; export writes configs both read the same way.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from llm_modules.config import ModelConfig
from llm_modules.interop.allow import ANY, Activation, Check, Fixed, Ignored, Mapped, Slot
from llm_modules.interop.common import (
    FEATURES_OFF,
    RUN_SETTINGS,
    head_entry,
    pad_token,
    sizes,
)
from llm_modules.interop.family import HF_FAMILIES, HFFamily
from llm_modules.interop.slots import activation_from_hf, activation_to_hf, component, ffn_hidden
from llm_modules.interop.weights import Map, Repeat, StateDict, WeightTable
from llm_modules.registry import ConfigError

#: ``feed_forward_proj`` -> our activation. HF reads "[gated-]<ACT2FN name>", except that plain
#: "gated-gelu" means gelu_new (tanh). The first spelling of a feed-forward is the one exported.
_FEED_FORWARDS = {
    "relu": ("relu", {}),
    "gelu": ("gelu", {"approximate": "none"}),
    "gelu_new": ("gelu", {"approximate": "tanh"}),
    "silu": ("silu", {}),
    "gated-relu": ("reglu", {}),
    "gated-gelu": ("geglu", {"approximate": "tanh"}),
    "gated-gelu_python": ("geglu", {"approximate": "none"}),
    "gated-silu": ("swiglu", {}),
}

#: other ACT2FN names for the same functions
_ACT_ALIASES = {"gelu_pytorch_tanh": "gelu_new", "gelu_python": "gelu", "swish": "silu"}
_GATED_ALIASES = {"gelu_new": "gelu", "gelu_pytorch_tanh": "gelu", "swish": "silu"}

#: where a T5 checkpoint may keep the shared embedding: ``shared.weight``, or only a stack's copy
_SHARED = ("shared.weight", "encoder.embed_tokens.weight", "decoder.embed_tokens.weight")

#: a cross-attention bucket table that old checkpoints stored but T5 never uses
_IGNORABLE = ("decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight",)


def _activation_from_proj(proj: str) -> Any:
    """Our activation for a ``feed_forward_proj`` value, accepting ACT2FN's aliases."""
    gated, _, act = proj.rpartition("-")
    if gated == "gated":
        proj = "gated-" + _GATED_ALIASES.get(act, act)
    elif not gated:
        proj = _ACT_ALIASES.get(act, act)
    return activation_from_hf(proj, _FEED_FORWARDS, "t5")


def _is_gated(config: ModelConfig) -> bool:
    return (activation_to_hf(config, _FEED_FORWARDS) or "").startswith("gated-")


def _scales_output(config: ModelConfig) -> bool:
    """Whether the decoder output is multiplied by d_model**-0.5 (original T5)."""
    return math.isclose(config.output_scale, config.d_model**-0.5, rel_tol=1e-9)


#: what the t5 family represents: every ModelConfig field (``allow``)
FIELDS = {
    **sizes("d_model", "num_decoder_layers", "num_heads"),
    **RUN_SETTINGS,
    **FEATURES_OFF,
    "n_encoder_layers": Check(lambda c: c.encoder_layers >= 1, "an encoder: n_encoder_layers >= 1 (or null)"),
    "n_kv_heads": Check(lambda c: c.kv_heads == c.n_heads, "no GQA/MQA: n_kv_heads = n_heads",
                        lambda c, f: f"n_kv_heads={c.kv_heads} < n_heads={c.n_heads}"),
    "head_dim": Mapped("d_kv"),
    "d_ff": Mapped("d_ff"),
    "max_seq_len": Ignored("relative positions: T5 has no maximum length"),
    "norm": Slot("rmsnorm", eps=ANY),
    "norm_eps": Mapped("layer_norm_epsilon"),
    "residual": Slot("pre"),
    "activation": Activation(_FEED_FORWARDS, d_ff=ANY, bias=False, dropout=ANY),
    # bidirectional is left out: T5 has bidirectional encoder and causal decoder buckets
    "position": Slot("t5", num_buckets=ANY, max_distance=ANY),
    "bias": Fixed(False),
    "dropout": Mapped("dropout_rate"),
    "attention_dropout": Ignored("T5 applies dropout_rate there too, and dropout is off at inference"),
    "attention_scale": Fixed(1.0),
    "output_scale": Check(lambda c: _head_fits(c), "1.0, or d_model**-0.5 with a tied head (an untied head is "
                          "never scaled; tie embeddings or set 1.0)",
                          lambda c, f: f"output_scale={c.output_scale!r} with tie_embeddings={c.tie_embeddings}"),
    "tie_embeddings": Mapped("tie_word_embeddings"),
    "embedding_norm": Fixed(False),
    "type_vocab_size": Fixed(0),
    "head_transform": Fixed(False),
    "lm_head_bias": Fixed(False),
    "init_std": Ignored("initialization only"),
}


@HF_FAMILIES.register("t5")
class T5Family(HFFamily):
    """T5-style encoder-decoders (``T5ForConditionalGeneration``)."""

    model_type, kind, kind_words, fields = "t5", "Seq2SeqLM", "an encoder-decoder", FIELDS

    # ---- import -------------------------------------------------------------------------------------------

    def config_from_hf(self, hf: dict[str, Any]) -> ModelConfig:
        pad = pad_token(hf, hf["vocab_size"])
        start = hf.get("decoder_start_token_id", pad)
        if start is not None and start != pad:
            raise ConfigError(
                f"t5 config.json: decoder_start_token_id={start} differs from pad_token_id={pad}; "
                "Seq2SeqLM starts decoder inputs with the pad token, so this checkpoint would train wrongly"
            )
        d_model = hf.get("d_model", 512)
        encoder_layers = hf.get("num_layers", 6)
        # transformers 5 stores the scale on its own; older configs tie it to tie_word_embeddings
        tied_flag = hf.get("tie_word_embeddings", True) is not False
        scaled = hf.get("scale_decoder_outputs", tied_flag)
        dropout = float(hf.get("dropout_rate", 0.1))
        return ModelConfig(
            vocab_size=hf["vocab_size"],
            d_model=d_model,
            n_layers=hf.get("num_decoder_layers") or encoder_layers,
            n_encoder_layers=encoder_layers,
            n_heads=hf.get("num_heads", 8),
            head_dim=hf.get("d_kv", 64),
            d_ff=hf.get("d_ff", 2048),
            norm="rmsnorm",
            norm_eps=hf.get("layer_norm_epsilon", 1e-6),
            residual="pre",
            activation=_activation_from_proj(hf.get("feed_forward_proj", "relu")),
            position={
                "name": "t5",
                "num_buckets": hf.get("relative_attention_num_buckets", 32),
                "max_distance": hf.get("relative_attention_max_distance", 128),
            },
            bias=False,
            attention_scale=1.0,
            # T5 applies dropout_rate to attention probabilities as well as to hidden states
            dropout=dropout,
            attention_dropout=dropout,
            # tied unless the checkpoint has a head of its own (see refine_config)
            tie_embeddings=True,
            output_scale=d_model**-0.5 if scaled else 1.0,
            max_seq_len=hf.get("n_positions", 512),
            pad_token_id=pad,
        )

    def refine_config(self, config: ModelConfig, weights: StateDict) -> ModelConfig:
        """Untie the head when the checkpoint's ``lm_head.weight`` differs from the shared embedding
        (T5 v1.1), as transformers 5 does; a missing or identical head is the shared table."""
        head, shared = weights.get("lm_head.weight"), _shared_embedding(weights)
        if head is not None and not torch.equal(head, shared):
            return config.replace(tie_embeddings=False)
        return config

    # ---- export -------------------------------------------------------------------------------------------

    def config_to_hf(self, config: ModelConfig) -> dict[str, Any]:
        buckets = component(config, "position")[1]  # with T5RelativeBias's defaults filled in
        scaled = _scales_output(config)
        return {
            "model_type": "t5",
            "architectures": ["T5ForConditionalGeneration"],
            "vocab_size": config.vocab_size,
            "d_model": config.d_model,
            "d_kv": config.dim_per_head,
            "d_ff": ffn_hidden(config, gated=_is_gated(config)),
            "num_layers": config.encoder_layers,
            "num_decoder_layers": config.n_layers,
            "num_heads": config.n_heads,
            "relative_attention_num_buckets": buckets["num_buckets"],
            "relative_attention_max_distance": buckets["max_distance"],
            "feed_forward_proj": activation_to_hf(config, _FEED_FORWARDS),
            "layer_norm_epsilon": component(config, "norm")[1]["eps"],
            "dropout_rate": config.dropout,
            "is_encoder_decoder": True,
            "pad_token_id": config.pad_token_id,
            "decoder_start_token_id": config.pad_token_id,
            # Every transformers version reads these two the same way: tied head <=> scaled output.
            # A tied head without the scale is exported as an untied copy (see weight_table).
            "tie_word_embeddings": scaled,
            "scale_decoder_outputs": scaled,
        }

    def weight_table(self, config: ModelConfig) -> WeightTable:
        """Both stacks; the head is tied exactly when the decoder output is scaled (``config_to_hf``),
        so a tied head without the scale is exported as an untied copy."""
        gated = _is_gated(config)
        return WeightTable(
            "t5",
            (
                Map("embed.tokens.weight", "shared.weight", read=_SHARED),
                *_stack("encoder", config.encoder_layers, cross=False, gated=gated),
                *_stack("decoder", config.n_layers, cross=True, gated=gated),
                head_entry(config, export_copy=not _scales_output(config)),
            ),
            ignorable=_IGNORABLE,
        )


def _head_fits(config: ModelConfig) -> bool:
    """T5 scales the decoder output by d_model**-0.5 exactly when the head is the shared embedding
    (transformers before 5 cannot express an untied head with the scale)."""
    return config.tie_embeddings if _scales_output(config) else config.output_scale == 1.0


def _shared_embedding(weights: StateDict) -> torch.Tensor:
    """The shared token table; checkpoints may store it only under a stack's ``embed_tokens``."""
    for name in _SHARED:
        if name in weights:
            return weights[name]
    raise ConfigError("t5 checkpoint: no shared embedding (shared.weight) found; the weights are not a T5 model")


def _stack(stack: str, n_layers: int, *, cross: bool, gated: bool) -> tuple:
    """One stack's entries. HF numbers a block's sublayers: self-attention, [cross-attention,]
    feed-forward, each with its own pre-norm, which is our ``residual.norms.<same index>``; the
    bucket table lives in the first block."""
    ours, theirs = f"{stack}.layers.{{i}}", f"{stack}.block.{{i}}.layer"
    attentions = [("attn", "SelfAttention")] + ([("cross_attn", "EncDecAttention")] if cross else [])
    ffn = [("gate", "wi_0"), ("up", "wi_1"), ("down", "wo")] if gated else [("up", "wi"), ("down", "wo")]
    layer = []
    for j, (our_attn, hf_attn) in enumerate(attentions):
        layer += [Map(f"{ours}.{our_attn}.{p}.weight", f"{theirs}.{j}.{hf_attn}.{p}.weight") for p in "qkvo"]
        layer.append(Map(f"{ours}.residual.norms.{j}.weight", f"{theirs}.{j}.layer_norm.weight"))
    j = len(attentions)
    layer += [Map(f"{ours}.ffn.{a}.weight", f"{theirs}.{j}.DenseReluDense.{b}.weight") for a, b in ffn]
    layer.append(Map(f"{ours}.residual.norms.{j}.weight", f"{theirs}.{j}.layer_norm.weight"))
    return (
        Map(f"{stack}.position.table.weight", f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"),
        Map(f"{stack}.final_norm.weight", f"{stack}.final_layer_norm.weight"),
        Repeat(n_layers, tuple(layer)),
    )
