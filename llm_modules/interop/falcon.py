"""Hugging Face Falcon family (``model_type: falcon``): LayerNorm, RoPE, a plain (GELU) MLP, one
``bias`` for every projection, a tied head by default, and three layouts of one decoder:

- Falcon-7B (``multi_query``, ``parallel_attn``): one key/value head, attention and MLP side by side
  on one shared norm (``input_layernorm``): our ``parallel`` residual with ``shared_norm``;
- Falcon-40B/180B (``new_decoder_architecture``): grouped keys/values (``num_kv_heads``), side by side
  with a norm each (``ln_attn``, ``ln_mlp``; one shared when ``num_ln_in_parallel_attn`` is 1);
- ``parallel_attn: false``: sequential pre-norm (``input_layernorm``, ``post_attention_layernorm``).

``query_key_value`` holds, for each key/value head, its group of query heads, then its key, then its
value: rows (n_kv_heads, n_heads / n_kv_heads + 2, head_dim). All three layouts are that one
(multi-query: one group of every query head; the old multi-head layout: groups of one).

ALiBi Falcons (``alibi: true``, Falcon-RW) are refused: transformers builds their bias from
attention-mask positions in bfloat16 and scales it by 1/sqrt(head_dim), which our ALiBi is not.
"""

from __future__ import annotations

from typing import Any

import torch

from llm_modules.config import ModelConfig
from llm_modules.interop.allow import ANY, Activation, Check, Fixed, Mapped, Slot
from llm_modules.interop.common import (
    DECODER_HEAD,
    FEATURES_OFF,
    RUN_SETTINGS,
    SCALED_ATTENTION,
    decoder_hf_fields,
    head_entry,
    hf_value,
    pad_token,
    sizes,
    untie_if_head_differs,
)
from llm_modules.interop.family import HF_FAMILIES, HFFamily
from llm_modules.interop.gpt_neox import PLAIN_ACTIVATIONS
from llm_modules.interop.rope import rope_from_hf, rope_to_hf
from llm_modules.interop.slots import activation_from_hf, activation_to_hf, component, ffn_hidden
from llm_modules.interop.weights import Map, Repeat, StateDict, Transform, WeightTable
from llm_modules.registry import ConfigError


def _sequential(config: ModelConfig) -> bool:
    return component(config, "residual")[0] == "pre"


#: what the falcon family represents: every ModelConfig field (``allow``)
FIELDS = {
    **sizes("hidden_size", "num_hidden_layers", "num_attention_heads"),
    **RUN_SETTINGS,
    **FEATURES_OFF,
    **DECODER_HEAD,
    "n_kv_heads": Check(lambda c: not _sequential(c) or c.kv_heads in (1, c.n_heads),
                        "grouped keys/values only side by side with the MLP (residual parallel); sequential "
                        "layers have n_kv_heads 1 (multi_query) or n_heads",
                        lambda c, f: f"n_kv_heads={c.kv_heads} with residual 'pre'"),
    "head_dim": Check(lambda c: c.dim_per_head * c.n_heads == c.d_model, "head_dim = d_model / n_heads",
                      lambda c, f: f"head_dim={c.dim_per_head} with d_model={c.d_model}, n_heads={c.n_heads}"),
    "d_ff": Mapped("ffn_hidden_size"),
    "max_seq_len": Mapped("max_position_embeddings"),
    "norm": Slot("layernorm", eps=ANY, bias=True),
    "norm_eps": Mapped("layer_norm_epsilon"),
    "residual": Slot(("parallel", "pre"), shared_norm=ANY),
    "activation": Activation(PLAIN_ACTIVATIONS, d_ff=ANY, bias=ANY, dropout=ANY),
    "position": Slot("rope", theta=ANY, fraction=1.0, interleaved=False, scaling=ANY, local_theta=None,
                      longrope_recompute=False),
    # one bias for every projection, the MLP's included
    "bias": Check(lambda c: bool(component(c, "activation")[1]["bias"]) == c.bias,
                  "one bias for every projection, the MLP's included (activation bias = bias)",
                  lambda c, f: f"bias={c.bias} with activation bias={component(c, 'activation')[1]['bias']}"),
    "dropout": Mapped("hidden_dropout"),
    "attention_dropout": Mapped("attention_dropout"),
    "attention_scale": SCALED_ATTENTION,
    "tie_embeddings": Mapped("tie_word_embeddings"),
    "embedding_norm": Fixed(False),
    "init_std": Mapped("initializer_range"),
}

#: config.json keys of the pre-transformers (RefinedWeb) Falcon code, which transformers 5 does not read
_LEGACY_KEYS = ("n_head", "n_layer", "n_head_kv")


def grouped_per_kv_head(n_kv_heads: int, q_per_kv: int) -> Transform:
    """q, k, v in rows (n_kv_heads, q_per_kv + 2, head_dim): each key/value head's queries, key, value."""
    def split(t: torch.Tensor) -> tuple[torch.Tensor, ...]:
        groups = t.unflatten(0, (n_kv_heads, q_per_kv + 2, -1))
        return (groups[:, :q_per_kv].flatten(0, 2), groups[:, q_per_kv].flatten(0, 1),
                groups[:, q_per_kv + 1].flatten(0, 1))

    def join(ts: tuple[torch.Tensor, ...]) -> torch.Tensor:
        q, k, v = ts
        return torch.cat((q.unflatten(0, (n_kv_heads, q_per_kv, -1)), k.unflatten(0, (n_kv_heads, 1, -1)),
                          v.unflatten(0, (n_kv_heads, 1, -1))), dim=1).flatten(0, 2)

    return Transform(f"grouped per key/value head ({n_kv_heads} x ({q_per_kv} queries, key, value))", split, join)


@HF_FAMILIES.register("falcon")
class FalconFamily(HFFamily):
    """Falcon decoders (``FalconForCausalLM``)."""

    model_type, kind, kind_words, fields = "falcon", "CausalLM", "a causal decoder", FIELDS

    def config_from_hf(self, hf: dict[str, Any]) -> ModelConfig:
        self._refuse(hf)
        d_model = hf_value(hf, "hidden_size", "n_embed")
        n_heads, vocab = hf["num_attention_heads"], hf["vocab_size"]
        new = bool(hf.get("new_decoder_architecture", False))
        multi_query, parallel = bool(hf.get("multi_query", True)), bool(hf.get("parallel_attn", True))
        n_kv = hf.get("num_kv_heads") or n_heads
        if new:
            residual: Any = {"name": "parallel", "shared_norm": hf.get("num_ln_in_parallel_attn") in (1,)}
        else:
            n_kv = 1 if multi_query else n_kv
            residual = "parallel" if parallel else "pre"
        bias = bool(hf.get("bias", False))
        return ModelConfig(
            vocab_size=vocab,
            d_model=d_model,
            n_layers=hf["num_hidden_layers"],
            n_heads=n_heads,
            n_kv_heads=n_kv,
            d_ff=hf.get("ffn_hidden_size") or 4 * d_model,
            norm="layernorm",
            residual=residual,
            activation=activation_from_hf(hf.get("activation") or "gelu", PLAIN_ACTIVATIONS, "falcon", bias=bias),
            position=rope_from_hf(hf, "falcon"),
            bias=bias,
            max_seq_len=hf.get("max_position_embeddings", 2048),
            norm_eps=hf.get("layer_norm_epsilon") or 1e-5,
            dropout=float(hf.get("hidden_dropout") or 0.0),
            attention_dropout=float(hf.get("attention_dropout") or 0.0),
            tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
            init_std=hf.get("initializer_range", 0.02),
            pad_token_id=pad_token(hf, vocab),
        )

    @staticmethod
    def _refuse(hf: dict[str, Any]) -> None:
        """What transformers' Falcon computes differently from any config of ours, or not at all."""
        def no(key: str, why: str, fix: str) -> ConfigError:
            return ConfigError(f"falcon config.json: {key}={hf.get(key)!r} {why}; {fix}")

        legacy = [k for k in _LEGACY_KEYS if k in hf]
        if legacy:
            raise no(legacy[0], "is a RefinedWeb-era key that transformers' Falcon does not read",
                     "rename n_head to num_attention_heads, n_layer to num_hidden_layers and n_head_kv to "
                     "num_kv_heads (the transformers Falcon config)")
        if hf.get("alibi", False):
            raise no("alibi", "(Falcon-RW) builds its ALiBi bias from attention-mask positions in bfloat16, scaled "
                     "by 1/sqrt(head_dim), which llm-modules' ALiBi does not represent", "use a rotary Falcon")
        if hf.get("apply_residual_connection_post_layernorm", False):
            raise no("apply_residual_connection_post_layernorm", "(the residual taken after the norm) is not "
                     "computed by transformers 5's Falcon", "use a checkpoint trained without it")
        new, parallel = hf.get("new_decoder_architecture", False), hf.get("parallel_attn", True)
        n_ln = hf.get("num_ln_in_parallel_attn")
        if new and not parallel:
            raise no("parallel_attn", "with new_decoder_architecture=true does not run in transformers (its "
                     "layers have no norms for that combination)", "set parallel_attn: true")
        if not new and parallel and n_ln == 2:
            raise no("num_ln_in_parallel_attn", "without new_decoder_architecture does not run in transformers",
                     "remove num_ln_in_parallel_attn")
        if n_ln not in (None, 1, 2):
            raise no("num_ln_in_parallel_attn", "is neither 1 nor 2", "set 1 (one shared norm) or 2 (ln_attn, ln_mlp)")
        n_kv, n_heads = hf.get("num_kv_heads"), hf["num_attention_heads"]
        if not new and not hf.get("multi_query", True) and n_kv not in (None, n_heads):
            raise no("num_kv_heads", "without new_decoder_architecture and multi_query does not run in transformers "
                     "(its fused projection holds n_heads keys)", "set num_kv_heads to num_attention_heads")

    def refine_config(self, config: ModelConfig, weights: StateDict) -> ModelConfig:
        return untie_if_head_differs(config, weights, "word_embeddings.weight", ("transformer.", ""))

    def config_to_hf(self, config: ModelConfig) -> dict[str, Any]:
        layout = self._layout(config)
        return {
            "model_type": "falcon",
            "architectures": ["FalconForCausalLM"],
            "vocab_size": config.vocab_size,
            "hidden_size": config.d_model,
            "num_hidden_layers": config.n_layers,
            "num_attention_heads": config.n_heads,
            **layout,
            "ffn_hidden_size": ffn_hidden(config, gated=False),
            "activation": activation_to_hf(config, PLAIN_ACTIVATIONS),
            "bias": config.bias,
            "alibi": False,
            "max_position_embeddings": config.max_seq_len,
            "layer_norm_epsilon": component(config, "norm")[1]["eps"],
            **rope_to_hf(config),
            "hidden_dropout": config.dropout,
            "attention_dropout": config.attention_dropout,
            **decoder_hf_fields(config),
        }

    @staticmethod
    def _layout(config: ModelConfig) -> dict[str, Any]:
        """The layout keys: Falcon-7B's (multi-query or multi-head, shared norm), the sequential one,
        or the new decoder architecture (grouped keys/values, or a norm each)."""
        name, options = component(config, "residual")
        kv, heads = config.kv_heads, config.n_heads
        if name == "pre" or (options.get("shared_norm") and kv in (1, heads)):
            return {"new_decoder_architecture": False, "multi_query": kv == 1, "num_kv_heads": kv,
                    "parallel_attn": name == "parallel"}
        return {"new_decoder_architecture": True, "multi_query": kv == 1, "num_kv_heads": kv, "parallel_attn": True,
                "num_ln_in_parallel_attn": 1 if options["shared_norm"] else 2}

    def weight_table(self, config: ModelConfig) -> WeightTable:
        ours, theirs = "stack.layers.{i}", "transformer.h.{i}"
        fused = grouped_per_kv_head(config.kv_heads, config.n_heads // config.kv_heads)
        params = ("weight", "bias") if config.bias else ("weight",)
        name, options = component(config, "residual")
        norms = (("input_layernorm", "post_attention_layernorm") if name == "pre"
                 else ("input_layernorm",) if options["shared_norm"] else ("ln_attn", "ln_mlp"))
        layer = (
            *(Map(tuple(f"{ours}.attn.{n}.{p}" for n in "qkv"), f"{theirs}.self_attention.query_key_value.{p}", fused)
              for p in params),
            *(Map(f"{ours}.{a}.{p}", f"{theirs}.{b}.{p}") for a, b in _PROJECTIONS for p in params),
            *(Map(f"{ours}.residual.norms.{j}.{p}", f"{theirs}.{norm}.{p}")
              for j, norm in enumerate(norms) for p in ("weight", "bias")),
        )
        return WeightTable(
            "falcon",
            (
                Map("embed.tokens.weight", "transformer.word_embeddings.weight"),
                Map("stack.final_norm.weight", "transformer.ln_f.weight"),
                Map("stack.final_norm.bias", "transformer.ln_f.bias"),
                Repeat(config.n_layers, layer),
                head_entry(config),
            ),
            prefix="transformer.",
            ignorable=("inv_freq",),  # rotary buffers (rotary_emb, or maybe_rotary in RW-era checkpoints)
        )


#: (our projection, HF projection) pairs copied as they are
_PROJECTIONS = (("attn.o", "self_attention.dense"), ("ffn.up", "mlp.dense_h_to_4h"), ("ffn.down", "mlp.dense_4h_to_h"))
