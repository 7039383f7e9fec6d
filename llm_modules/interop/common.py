"""Pieces shared by the Hugging Face family modules.

Reading HF config values, the allow-list rules that several families share (declared once here,
spread into each family's ``FIELDS``), the head entry of a weight table, and the rule for tied
heads, which transformers decides from the weights rather than from config.json.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import torch

from llm_modules.config import ModelConfig
from llm_modules.interop.allow import Check, Fixed, Ignored, Mapped, Rule
from llm_modules.interop.rope import rope_to_hf
from llm_modules.interop.slots import component
from llm_modules.interop.weights import Map, Repeat, StateDict, Tied, WeightTable


def hf_value(hf: dict[str, Any], *names: str, default: Any = None) -> Any:
    """The first of ``names`` present (and not null) in an HF config; configs rename fields across
    versions (``n_embd`` / ``hidden_size``, ``n_head`` / ``num_attention_heads``)."""
    for name in names:
        if hf.get(name) is not None:
            return hf[name]
    return default


def default_attention_scale(config: ModelConfig) -> bool:
    """Whether attention scores are scaled by the usual 1/sqrt(head_dim)."""
    return config.attention_scale is None or math.isclose(
        config.attention_scale, config.dim_per_head**-0.5, rel_tol=1e-7
    )


def pad_token(hf: dict[str, Any], vocab_size: int) -> int:
    """HF's pad id when it is a usable token id, else 0 (our config needs one; padding is masked anyway)."""
    pad = hf.get("pad_token_id")
    return pad if isinstance(pad, int) and 0 <= pad < vocab_size else 0


# ---- allow-list pieces ---------------------------------------------------------------------------------------

#: fields every family carries or may ignore: run settings that change no logits, and the ids
#: written to config.json
RUN_SETTINGS: dict[str, Rule] = {
    "attention": Ignored("every attention backend computes the same attention"),
    "plugins": Ignored("plugins register components; the components in use are checked by their slots"),
    "pad_token_id": Mapped("pad_token_id"),
    "bos_token_id": Mapped("bos_token_id"),
    "eos_token_id": Mapped("eos_token_id"),
}

def sizes(d_model: str, n_layers: str, n_heads: str) -> dict[str, Rule]:
    """The sizes every family maps, under the family's config.json names."""
    return {
        "vocab_size": Mapped("vocab_size"),
        "d_model": Mapped(d_model),
        "n_layers": Mapped(n_layers),
        "n_heads": Mapped(n_heads),
    }


def follows_bias(field: str) -> Check:
    """A per-projection bias (``qkv_bias``, ``out_bias``) in a family with one bias for all
    projections: null, or equal to ``bias``."""
    return Check(lambda c: getattr(c, field) in (None, c.bias), f"one bias for every projection: {field} null",
                 lambda c, f: f"{f}={getattr(c, f)!r} with bias={c.bias!r}")


#: features the classic HF families (GPT-2, BLOOM, LLaMA, T5, BERT) lack: each must stay at the
#: value that turns it off (families that have one map it instead)
FEATURES_OFF: dict[str, Rule] = {
    "sliding_window": Fixed(None),
    "layer_types": Fixed(None),
    "sparse_stride": Fixed(None),
    "embedding_grad_scale": Fixed(1.0),
    "embedding_scale": Fixed(1.0),
    "qk_norm": Fixed(None),
    "attention_softcap": Fixed(None),
    "logit_softcap": Fixed(None),
    "qkv_bias": follows_bias("qkv_bias"),
    "out_bias": follows_bias("out_bias"),
}

#: what a decoder-only family (llama, gpt2, bloom) fixes beyond FEATURES_OFF
DECODER_HEAD: dict[str, Rule] = {
    "output_scale": Fixed(1.0),
    "head_transform": Fixed(False),
    "lm_head_bias": Fixed(False),
    "type_vocab_size": Fixed(0),
    "n_encoder_layers": Ignored("a decoder-only model has no encoder"),
}

SCALED_ATTENTION = Check(default_attention_scale, "1/sqrt(head_dim): attention_scale null")


def full_heads() -> dict[str, Rule]:
    """Families with one classic attention: every head has its own key/value, head_dim = d/heads."""
    return {
        "n_kv_heads": Check(lambda c: c.kv_heads == c.n_heads, "no GQA/MQA: n_kv_heads = n_heads",
                            lambda c, f: f"n_kv_heads={c.kv_heads} < n_heads={c.n_heads}"),
        "head_dim": Check(lambda c: c.dim_per_head * c.n_heads == c.d_model, "head_dim = d_model / n_heads",
                          lambda c, f: f"head_dim={c.dim_per_head} with d_model={c.d_model}, n_heads={c.n_heads}"),
    }


# ---- weights -------------------------------------------------------------------------------------------------

def head_entry(config: ModelConfig, theirs: str = "lm_head.weight", export_copy: bool = False) -> Map | Tied:
    """The LM head: the embedding itself when tied (a stored copy is dropped on import), else ``theirs``."""
    if config.tie_embeddings:
        return Tied("head.proj.weight", "embed.tokens.weight", stored_copy=theirs, export_copy=export_copy)
    return Map("head.proj.weight", theirs)


def llama_layout(family: str, config: ModelConfig, layer: tuple, ignorable: tuple[str, ...] = ("rotary_emb.inv_freq",)
                 ) -> WeightTable:
    """The checkpoint layout LLaMA set and most decoders since share: ``model.embed_tokens``, the
    blocks under ``model.layers.{i}`` (``layer``: one block's entries), ``model.norm`` and the head
    (``lm_head``, or the embedding when tied); ``ignorable``: RoPE buffers older checkpoints saved."""
    return WeightTable(
        family,
        (
            Map("embed.tokens.weight", "model.embed_tokens.weight"),
            Map("stack.final_norm.weight", "model.norm.weight"),
            Repeat(config.n_layers, layer),
            head_entry(config),
        ),
        prefix="model.",
        ignorable=ignorable,
    )


def linear(ours: str, theirs: str, bias: bool, **options: Any) -> tuple[Map, ...]:
    """A projection's weight, and its bias when it has one, under the same module names."""
    return tuple(Map(f"{ours}.{p}", f"{theirs}.{p}", **options) for p in ("weight", "bias")[: 1 + bias])


def untie_if_head_differs(
    config: ModelConfig, weights: StateDict, embedding: str, prefixes: Iterable[str] = ("",), head: str = "lm_head.weight"
) -> ModelConfig:
    """Untie when the checkpoint holds a head that differs from the embedding, even under
    ``tie_word_embeddings: true``: transformers 5 then keeps the two apart (and only warns), so
    the logits to match are those of the separate head."""
    table = next((weights[p + embedding] for p in prefixes if p + embedding in weights), None)
    stored = weights.get(head)
    if config.tie_embeddings and table is not None and stored is not None and not torch.equal(table, stored):
        return config.replace(tie_embeddings=False)
    return config


def llama_hf_fields(config: ModelConfig, model_type: str, architecture: str, rope: dict[str, Any] | None = None,
                    head_dim: bool = True) -> dict[str, Any]:
    """config.json keys that LLaMA named and most decoders since share, with the same meaning: the
    model type, the sizes (not the feed-forward's, which MoE families name otherwise), the context,
    RMSNorm's eps, RoPE (``rope``: the family's own fields, default ``rope.rope_to_hf``), attention
    dropout and ``decoder_hf_fields``. ``head_dim``: whether the family's config has that key."""
    return {
        "model_type": model_type,
        "architectures": [architecture],
        "vocab_size": config.vocab_size,
        "hidden_size": config.d_model,
        "num_hidden_layers": config.n_layers,
        "num_attention_heads": config.n_heads,
        "num_key_value_heads": config.kv_heads,
        **({"head_dim": config.dim_per_head} if head_dim else {}),
        "max_position_embeddings": config.max_seq_len,
        "rms_norm_eps": component(config, "norm")[1]["eps"],
        **(rope_to_hf(config) if rope is None else rope),
        "attention_dropout": config.attention_dropout,
        **decoder_hf_fields(config),
    }


def llama_fields_from_hf(hf: dict[str, Any], *, max_seq_len: int, norm_eps: float) -> dict[str, Any]:
    """The ModelConfig values of the keys ``llama_hf_fields`` writes, read back; ``max_seq_len`` and
    ``norm_eps`` are the family's config-class defaults, for a config.json without them."""
    d_model, n_heads = hf["hidden_size"], hf["num_attention_heads"]
    head_dim = hf.get("head_dim")
    return dict(
        vocab_size=hf["vocab_size"],
        d_model=d_model,
        n_layers=hf["num_hidden_layers"],
        n_heads=n_heads,
        n_kv_heads=hf.get("num_key_value_heads") or n_heads,
        head_dim=None if head_dim in (None, d_model // n_heads) else head_dim,
        max_seq_len=hf.get("max_position_embeddings", max_seq_len),
        norm_eps=hf.get("rms_norm_eps", norm_eps),
        attention_dropout=float(hf.get("attention_dropout") or 0.0),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        init_std=hf.get("initializer_range", 0.02),
        pad_token_id=pad_token(hf, hf["vocab_size"]),
    )


def decoder_hf_fields(config: ModelConfig) -> dict[str, Any]:
    """config.json fields every HF causal decoder shares. BOS/EOS are the config's (None when it
    has none: they belong to a tokenizer)."""
    return {
        "initializer_range": config.init_std,
        "tie_word_embeddings": config.tie_embeddings,
        "pad_token_id": config.pad_token_id,
        "bos_token_id": config.bos_token_id,
        "eos_token_id": config.eos_token_id,
    }
