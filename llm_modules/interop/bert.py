"""Hugging Face BERT family (``model_type: bert``, ``BertForMaskedLM``) <-> ``MaskedLM``.

BERT is a post-norm encoder with LayerNorms and biases everywhere, learned absolute positions,
token-type embeddings and a LayerNorm over the summed embeddings. Its masked-LM head is a
transform (dense, activation, LayerNorm) followed by a projection tied to the word embeddings
plus an output-only bias.

HF uses ``hidden_act`` in both the feed-forward and the head transform, and our head transform
is exact GELU, so only ``hidden_act: gelu`` is representable; others are refused, not approximated.
Positions: HF numbers every slot 0..T-1 while we count real tokens, which agree on unpadded and
right-padded batches (BERT's convention).
"""

from __future__ import annotations

from typing import Any

from llm_modules.config import ModelConfig
from llm_modules.interop.allow import ANY, Fixed, Ignored, Mapped, Slot
from llm_modules.interop.common import (
    FEATURES_OFF,
    RUN_SETTINGS,
    SCALED_ATTENTION,
    full_heads,
    head_entry,
    pad_token,
    sizes,
    untie_if_head_differs,
)
from llm_modules.interop.family import HF_FAMILIES, HFFamily
from llm_modules.interop.slots import component, ffn_hidden
from llm_modules.interop.weights import Map, Repeat, StateDict, WeightTable
from llm_modules.registry import ConfigError

#: ACT2FN names of exact (erf) GELU, the one activation our head transform has
_EXACT_GELU = ("gelu", "gelu_python")

#: tensors of other BERT heads or buffers that a masked LM does not use (pretraining checkpoints
#: carry the pooler and next-sentence head; old ones saved the position_ids buffer)
_IGNORABLE = (
    "embeddings.position_ids",
    "pooler.dense.weight",
    "pooler.dense.bias",
    "cls.seq_relationship.weight",
    "cls.seq_relationship.bias",
)

_WORD_EMBEDDINGS = "embeddings.word_embeddings.weight"
_HEAD_WEIGHT, _HEAD_BIAS, _BIAS = "cls.predictions.decoder.weight", "cls.predictions.decoder.bias", "cls.predictions.bias"


#: what the bert family represents: every ModelConfig field (``allow``)
FIELDS = {
    **sizes("hidden_size", "num_hidden_layers", "num_attention_heads"),
    **RUN_SETTINGS,
    **FEATURES_OFF,
    **full_heads(),
    "n_encoder_layers": Ignored("a MaskedLM is one encoder of n_layers"),
    "d_ff": Mapped("intermediate_size"),
    "max_seq_len": Mapped("max_position_embeddings"),
    "norm": Slot("layernorm", eps=ANY, bias=True),
    "norm_eps": Mapped("layer_norm_eps"),
    "residual": Slot("post"),
    # HF applies hidden_act in the head transform too, and that transform is exact GELU here
    "activation": Slot("gelu", approximate="none", d_ff=ANY, bias=True, dropout=ANY),
    "position": Slot("learned", offset=0),
    "bias": Fixed(True),
    "lm_head_bias": Ignored("HF's head always has a bias: a model without one exports zeros, the same logits"),
    "head_transform": Fixed(True),
    "output_scale": Fixed(1.0),
    "dropout": Mapped("hidden_dropout_prob"),
    "attention_dropout": Mapped("attention_probs_dropout_prob"),
    "attention_scale": SCALED_ATTENTION,
    "tie_embeddings": Mapped("tie_word_embeddings"),
    "embedding_norm": Fixed(True),
    # HF always has a token-type table: a model without types exports one all-zero type
    "type_vocab_size": Mapped("type_vocab_size"),
    "init_std": Mapped("initializer_range"),
}


@HF_FAMILIES.register("bert")
class BertFamily(HFFamily):
    """BERT-style encoders with the masked-LM head (``BertForMaskedLM``)."""

    model_type, kind, kind_words, fields = "bert", "MaskedLM", "an encoder-only masked LM", FIELDS
    generates = False

    # ---- import -------------------------------------------------------------------------------------------

    def config_from_hf(self, hf: dict[str, Any]) -> ModelConfig:
        _check_importable(hf)
        return ModelConfig(
            vocab_size=hf["vocab_size"],
            d_model=hf["hidden_size"],
            n_layers=hf["num_hidden_layers"],
            n_heads=hf["num_attention_heads"],
            d_ff=hf["intermediate_size"],
            norm="layernorm",
            norm_eps=hf.get("layer_norm_eps", 1e-12),
            residual="post",
            activation="gelu",
            position="learned",
            max_seq_len=hf.get("max_position_embeddings", 512),
            bias=True,
            lm_head_bias=True,
            head_transform=True,
            embedding_norm=True,
            type_vocab_size=hf.get("type_vocab_size", 2),
            tie_embeddings=hf.get("tie_word_embeddings", True) is not False,
            dropout=float(hf.get("hidden_dropout_prob", 0.1)),
            attention_dropout=float(hf.get("attention_probs_dropout_prob", 0.1)),
            init_std=hf.get("initializer_range", 0.02),
            pad_token_id=pad_token(hf, hf["vocab_size"]),
        )

    def refine_config(self, config: ModelConfig, weights: StateDict) -> ModelConfig:
        """Untie the head when the checkpoint's decoder weight differs from the word embeddings,
        as transformers 5 does even under ``tie_word_embeddings: true``."""
        return untie_if_head_differs(config, weights, _WORD_EMBEDDINGS, ("bert.", ""), head=_HEAD_WEIGHT)

    # ---- export -------------------------------------------------------------------------------------------

    def config_to_hf(self, config: ModelConfig) -> dict[str, Any]:
        return {
            "model_type": "bert",
            "architectures": ["BertForMaskedLM"],
            "vocab_size": config.vocab_size,
            "hidden_size": config.d_model,
            "num_hidden_layers": config.n_layers,
            "num_attention_heads": config.n_heads,
            "intermediate_size": ffn_hidden(config, gated=False),
            "hidden_act": "gelu",
            "hidden_dropout_prob": config.dropout,
            "attention_probs_dropout_prob": config.attention_dropout,
            "max_position_embeddings": config.max_seq_len,
            # HF always has a token-type table; a model without types exports one all-zero type
            "type_vocab_size": max(config.type_vocab_size, 1),
            "initializer_range": config.init_std,
            "layer_norm_eps": component(config, "norm")[1]["eps"],
            "pad_token_id": config.pad_token_id,
            "tie_word_embeddings": config.tie_embeddings,
        }

    def weight_table(self, config: ModelConfig) -> WeightTable:
        ours, theirs = "stack.layers.{i}", "bert.encoder.layer.{i}"
        head_bias_copies = () if config.tie_embeddings else (_HEAD_BIAS,)
        return WeightTable(
            "bert",
            (
                Map("embed.tokens.weight", "bert.embeddings.word_embeddings.weight"),
                Map("embed.types.weight", "bert.embeddings.token_type_embeddings.weight",
                    fill=lambda state: state["embed.tokens.weight"].new_zeros(1, config.d_model)),
                Map("stack.position.table.weight", "bert.embeddings.position_embeddings.weight"),
                *(Map(f"stack.embedding_norm.{p}", f"bert.embeddings.LayerNorm.{p}") for p in ("weight", "bias")),
                Repeat(config.n_layers, tuple(
                    Map(f"{ours}.{a}.{p}", f"{theirs}.{b}.{p}") for a, b in _LAYER for p in ("weight", "bias")
                )),
                *(Map(f"{a}.{p}", f"{b}.{p}") for a, b in _HEAD_TRANSFORM for p in ("weight", "bias")),
                # transformers 5 computes with the decoder's own bias when the head is untied (and
                # reads it first); older checkpoints store only cls.predictions.bias
                Map("head.proj.bias", _BIAS, read=(_HEAD_BIAS, _BIAS), copies=head_bias_copies,
                    fill=lambda state: state["embed.tokens.weight"].new_zeros(config.vocab_size)),
                head_entry(config, _HEAD_WEIGHT),
            ),
            prefix="bert.",
            ignorable=_IGNORABLE,
            renames=(("LayerNorm.gamma", "LayerNorm.weight"), ("LayerNorm.beta", "LayerNorm.bias")),
        )


#: (our module, HF module under ``encoder.layer.{i}``) of one layer, weight and bias each
_LAYER = (
    ("attn.q", "attention.self.query"),
    ("attn.k", "attention.self.key"),
    ("attn.v", "attention.self.value"),
    ("attn.o", "attention.output.dense"),
    ("residual.norms.0", "attention.output.LayerNorm"),
    ("ffn.up", "intermediate.dense"),
    ("ffn.down", "output.dense"),
    ("residual.norms.1", "output.LayerNorm"),
)
_HEAD_TRANSFORM = (("head.transform.0", "cls.predictions.transform.dense"),
                   ("head.transform.2", "cls.predictions.transform.LayerNorm"))


def _check_importable(hf: dict[str, Any]) -> None:
    """Refuse BERT variants whose math MaskedLM does not have, naming the config field."""
    act = hf.get("hidden_act", "gelu")
    if act not in _EXACT_GELU:
        raise ConfigError(
            f"bert config.json: hidden_act {act!r} is not supported; only exact 'gelu' (HF applies hidden_act "
            "in the masked-LM head transform too, and MaskedLM's transform is exact GELU)"
        )
    position = hf.get("position_embedding_type", "absolute")
    if position != "absolute":
        raise ConfigError(f"bert config.json: position_embedding_type {position!r} is not supported; only 'absolute'")
    if hf.get("is_decoder") or hf.get("add_cross_attention"):
        raise ConfigError(
            "bert config.json: is_decoder/add_cross_attention is set (a causal BERT decoder); "
            "MaskedLM is a bidirectional encoder"
        )
