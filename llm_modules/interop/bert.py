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
from llm_modules.interop.common import (
    HFTensors,
    component,
    default_attention_scale,
    ffn_hidden,
    full_heads_mismatches,
    pad_token,
    require,
    tie_head,
    untie_if_head_differs,
)
from llm_modules.interop.family import HF_FAMILIES, HFFamily, StateDict
from llm_modules.models import LanguageModel, MaskedLM
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


@HF_FAMILIES.register("bert")
class BertFamily(HFFamily):
    """BERT-style encoders with the masked-LM head (``BertForMaskedLM``)."""

    kind = MaskedLM

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

    def weights_from_hf(self, weights: StateDict, config: ModelConfig) -> StateDict:
        hf = HFTensors(_modern_names(weights), "bert", prefixes=("bert.", ""), ignorable=_IGNORABLE)
        state = {ours: hf.take(theirs) for ours, theirs in _bert_names(config)}
        state["embed.types.weight"] = hf.take("embeddings.token_type_embeddings.weight")
        # transformers 5 computes with the decoder's own bias when the head is untied; otherwise the
        # two names hold the same tensor and older checkpoints store only cls.predictions.bias
        if hf.has(_HEAD_BIAS):
            state["head.proj.bias"] = hf.take(_HEAD_BIAS)
            hf.skip(_BIAS)
        else:
            state["head.proj.bias"] = hf.take(_BIAS)
        tie_head(state, config, hf, state["embed.tokens.weight"], _HEAD_WEIGHT)
        hf.check_all_used()
        return state

    # ---- export -------------------------------------------------------------------------------------------

    def mismatches(self, config: ModelConfig, kind: type[LanguageModel]) -> list[str]:
        problems = []
        if not issubclass(kind, MaskedLM):
            problems.append(f"{kind.__name__} is not an encoder-only masked LM (the bert family is a MaskedLM)")
        problems += require(config, "norm", "bert", ["layernorm"], bias=True)
        problems += require(config, "residual", "bert", ["post"])
        problems += require(config, "position", "bert", ["learned"])
        name, options = component(config, "activation")
        if name != "gelu" or options.get("approximate") != "none":
            shown = f"gelu (approximate={options['approximate']!r})" if name == "gelu" else repr(name)
            problems.append(
                f"activation {shown} (the bert family has exact 'gelu': HF applies hidden_act in the "
                "head transform too, and that transform is exact GELU here)"
            )
        if not (config.bias and options.get("bias")):
            problems.append("bias=False (the bert family has biases in every linear layer)")
        if not config.head_transform:
            problems.append("head_transform=False (the bert family's head has a dense+GELU+LayerNorm transform)")
        if not config.embedding_norm:
            problems.append("embedding_norm=False (the bert family normalizes the summed embeddings)")
        if not default_attention_scale(config):
            problems.append(f"attention_scale={config.attention_scale} (the bert family uses 1/sqrt(head_dim))")
        problems += full_heads_mismatches(config, "bert")
        for field, want in _FIXED.items():
            if getattr(config, field) != want:
                problems.append(f"{field}={getattr(config, field)!r} (the bert family has {field}={want!r})")
        return problems

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

    def weights_to_hf(self, state: StateDict, config: ModelConfig) -> StateDict:
        out = {_hf_name(theirs): state[ours] for ours, theirs in _bert_names(config)}
        embedding = state["embed.tokens.weight"]
        types = state.get("embed.types.weight")
        out["bert.embeddings.token_type_embeddings.weight"] = (
            types if types is not None else embedding.new_zeros(1, config.d_model)
        )
        # HF's head always has a bias; a model without one exports zeros (the same logits)
        bias = state.get("head.proj.bias")
        out[_BIAS] = bias if bias is not None else embedding.new_zeros(config.vocab_size)
        if not config.tie_embeddings:
            out[_HEAD_WEIGHT] = state["head.proj.weight"]
            # transformers 5 reads an untied head's own bias; older versions share cls.predictions.bias
            out[_HEAD_BIAS] = out[_BIAS].clone()
        return out


#: fields whose value the bert family fixes
_FIXED = {
    "sliding_window": None,
    "sparse_stride": None,
    "embedding_grad_scale": 1.0,
    "output_scale": 1.0,
}


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


def _modern_names(weights: StateDict) -> StateDict:
    """Old (TensorFlow-converted) checkpoints call LayerNorm parameters gamma and beta."""
    renamed = {}
    for name, tensor in weights.items():
        if name.endswith("LayerNorm.gamma"):
            name = name[: -len("gamma")] + "weight"
        elif name.endswith("LayerNorm.beta"):
            name = name[: -len("beta")] + "bias"
        renamed[name] = tensor
    return renamed


def _hf_name(name: str) -> str:
    """Full HF name: the encoder lives under ``bert.``, the head under ``cls.``."""
    return name if name.startswith("cls.") else "bert." + name


def _bert_names(config: ModelConfig) -> list[tuple[str, str]]:
    """(our name, HF name without the ``bert.`` prefix) for every tensor except the token types
    and the head's projection and bias."""
    pairs = [
        ("embed.tokens.weight", _WORD_EMBEDDINGS),
        ("stack.position.table.weight", "embeddings.position_embeddings.weight"),
        ("stack.embedding_norm.weight", "embeddings.LayerNorm.weight"),
        ("stack.embedding_norm.bias", "embeddings.LayerNorm.bias"),
    ]
    modules = [
        ("attn.q", "attention.self.query"),
        ("attn.k", "attention.self.key"),
        ("attn.v", "attention.self.value"),
        ("attn.o", "attention.output.dense"),
        ("residual.norms.0", "attention.output.LayerNorm"),
        ("ffn.up", "intermediate.dense"),
        ("ffn.down", "output.dense"),
        ("residual.norms.1", "output.LayerNorm"),
    ]
    for i in range(config.n_layers):
        for ours, theirs in modules:
            for p in ("weight", "bias"):
                pairs.append((f"stack.layers.{i}.{ours}.{p}", f"encoder.layer.{i}.{theirs}.{p}"))
    for ours, theirs in (("head.transform.0", "cls.predictions.transform.dense"),
                         ("head.transform.2", "cls.predictions.transform.LayerNorm")):
        for p in ("weight", "bias"):
            pairs.append((f"{ours}.{p}", f"{theirs}.{p}"))
    return pairs
