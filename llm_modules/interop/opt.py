"""Hugging Face OPT family (``model_type: opt``): learned absolute positions read with an offset of 2
(OPT's table has two rows before position 0), LayerNorm before (``do_layer_norm_before``, with a final
norm) or after each sublayer, a ReLU MLP, one ``enable_bias`` for every projection, a tied head.

OPT-350M's projections between a smaller embedding and the hidden size (``word_embed_proj_dim`` !=
``hidden_size``: ``project_in``/``project_out``) and norms without parameters are refused.
"""

from __future__ import annotations

from typing import Any

from llm_modules.config import ModelConfig
from llm_modules.interop.allow import ANY, Activation, Check, Fixed, Mapped, Slot
from llm_modules.interop.common import (
    DECODER_HEAD,
    FEATURES_OFF,
    RUN_SETTINGS,
    SCALED_ATTENTION,
    full_heads,
    head_entry,
    linear,
    pad_token,
    sizes,
    untie_if_head_differs,
)
from llm_modules.interop.family import HF_FAMILIES, HFFamily
from llm_modules.interop.gpt_neox import PLAIN_ACTIVATIONS
from llm_modules.interop.slots import activation_from_hf, activation_to_hf, component, ffn_hidden
from llm_modules.interop.weights import Map, Repeat, StateDict, WeightTable
from llm_modules.registry import ConfigError

#: rows of OPT's position table before position 0
OFFSET = 2
#: OPT's LayerNorms are torch's default (eps not in config.json)
EPS = 1e-5

#: what the opt family represents: every ModelConfig field (``allow``)
FIELDS = {
    **sizes("hidden_size", "num_hidden_layers", "num_attention_heads"),
    **RUN_SETTINGS,
    **FEATURES_OFF,
    **DECODER_HEAD,
    **full_heads(),
    "d_ff": Mapped("ffn_dim"),
    "max_seq_len": Mapped("max_position_embeddings"),
    "norm": Slot("layernorm", eps=EPS, bias=True),
    "norm_eps": Fixed(EPS),
    # do_layer_norm_before: pre-norm with a final norm; false: post-norm
    "residual": Slot(("pre", "post")),
    "activation": Activation(PLAIN_ACTIVATIONS, d_ff=ANY, bias=ANY, dropout=ANY),
    "position": Slot("learned", offset=OFFSET),
    "bias": Check(lambda c: bool(component(c, "activation")[1]["bias"]) == c.bias,
                  "one bias for every projection, the MLP's included (activation bias = bias)",
                  lambda c, f: f"bias={c.bias} with activation bias={component(c, 'activation')[1]['bias']}"),
    "dropout": Mapped("dropout"),
    "attention_dropout": Mapped("attention_dropout"),
    "attention_scale": SCALED_ATTENTION,
    "tie_embeddings": Mapped("tie_word_embeddings"),
    "embedding_norm": Fixed(False),
    "init_std": Mapped("init_std"),
}


@HF_FAMILIES.register("opt")
class OPTFamily(HFFamily):
    """OPT decoders (``OPTForCausalLM``)."""

    model_type, kind, kind_words, fields = "opt", "CausalLM", "a causal decoder", FIELDS

    def config_from_hf(self, hf: dict[str, Any]) -> ModelConfig:
        d_model, vocab = hf["hidden_size"], hf["vocab_size"]
        refusals = (
            ("word_embed_proj_dim", hf.get("word_embed_proj_dim") not in (None, d_model),
             f"differs from hidden_size={d_model}: OPT then projects the embeddings in and the hidden states out "
             "(project_in/project_out), which llm-modules does not represent", "use an OPT whose embedding size is "
             "its hidden size (every OPT but 350M)"),
            ("layer_norm_elementwise_affine", not hf.get("layer_norm_elementwise_affine", True),
             "(LayerNorms without weight and bias) is not represented", "use an OPT with affine LayerNorms"),
            ("_remove_final_layer_norm", bool(hf.get("_remove_final_layer_norm", False)),
             "(a pre-norm stack without its final norm) is not represented", "use an OPT with its final norm"),
        )
        for key, refused, why, fix in refusals:
            if refused:
                raise ConfigError(f"opt config.json: {key}={hf.get(key)!r} {why}; {fix}")
        bias = bool(hf.get("enable_bias", True))
        return ModelConfig(
            vocab_size=vocab,
            d_model=d_model,
            n_layers=hf["num_hidden_layers"],
            n_heads=hf["num_attention_heads"],
            d_ff=hf["ffn_dim"],
            norm="layernorm",
            norm_eps=EPS,
            residual="pre" if hf.get("do_layer_norm_before", True) else "post",
            activation=activation_from_hf(hf.get("activation_function", "relu"), PLAIN_ACTIVATIONS, "opt", bias=bias),
            position={"name": "learned", "offset": OFFSET},
            bias=bias,
            max_seq_len=hf.get("max_position_embeddings", 2048),
            dropout=float(hf.get("dropout") or 0.0),
            attention_dropout=float(hf.get("attention_dropout") or 0.0),
            tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
            init_std=hf.get("init_std", 0.02),
            pad_token_id=pad_token(hf, vocab),
        )

    def refine_config(self, config: ModelConfig, weights: StateDict) -> ModelConfig:
        return untie_if_head_differs(config, weights, "decoder.embed_tokens.weight", ("model.", ""))

    def config_to_hf(self, config: ModelConfig) -> dict[str, Any]:
        return {
            "model_type": "opt",
            "architectures": ["OPTForCausalLM"],
            "vocab_size": config.vocab_size,
            "hidden_size": config.d_model,
            "word_embed_proj_dim": config.d_model,
            "ffn_dim": ffn_hidden(config, gated=False),
            "num_hidden_layers": config.n_layers,
            "num_attention_heads": config.n_heads,
            "max_position_embeddings": config.max_seq_len,
            "do_layer_norm_before": component(config, "residual")[0] == "pre",
            "activation_function": activation_to_hf(config, PLAIN_ACTIVATIONS),
            "enable_bias": config.bias,
            "layer_norm_elementwise_affine": True,
            "dropout": config.dropout,
            "attention_dropout": config.attention_dropout,
            "init_std": config.init_std,
            "tie_word_embeddings": config.tie_embeddings,
            "pad_token_id": config.pad_token_id,
            "bos_token_id": config.bos_token_id,
            "eos_token_id": config.eos_token_id,
        }

    def weight_table(self, config: ModelConfig) -> WeightTable:
        ours, theirs = "stack.layers.{i}", "model.decoder.layers.{i}"
        layer = (
            *(m for a, b in (("q", "q_proj"), ("k", "k_proj"), ("v", "v_proj"), ("o", "out_proj"))
              for m in linear(f"{ours}.attn.{a}", f"{theirs}.self_attn.{b}", config.bias)),
            *(m for a, b in (("up", "fc1"), ("down", "fc2")) for m in linear(f"{ours}.ffn.{a}", f"{theirs}.{b}",
                                                                               config.bias)),
            *(Map(f"{ours}.residual.norms.{j}.{p}", f"{theirs}.{norm}.{p}")
              for j, norm in enumerate(("self_attn_layer_norm", "final_layer_norm")) for p in ("weight", "bias")),
        )
        final = (() if component(config, "residual")[0] == "post" else
                 tuple(Map(f"stack.final_norm.{p}", f"model.decoder.final_layer_norm.{p}") for p in ("weight", "bias")))
        return WeightTable(
            "opt",
            (
                Map("embed.tokens.weight", "model.decoder.embed_tokens.weight"),
                Map("stack.position.table.weight", "model.decoder.embed_positions.weight"),
                *final,
                Repeat(config.n_layers, layer),
                head_entry(config),
            ),
            prefix="model.",
        )
