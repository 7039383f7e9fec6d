"""Hugging Face Gemma family (``model_type: gemma``, ``GemmaForCausalLM``): Gemma's RMSNorm with
gain ``1 + weight``, pre-norm, GeGLU with tanh GELU, RoPE, an explicit head_dim (256 in the
published models, not hidden_size / heads), MQA/GQA, token embeddings scaled by sqrt(hidden_size)
in the activations' dtype, a head tied to the embedding.

The module also holds what Gemma 2 and Gemma 3 (``gemma2``, ``gemma3_text``) share with it: they
subclass ``GemmaFamily`` and add their layout, windows, soft-caps and QK-norm.

transformers 5.25 is the reference: a key config.json leaves out takes its config class's default
(``DEFAULTS``), and Gemma 1's legacy ``hidden_act: gelu`` is read as the tanh GELU, as
transformers rewrites it.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

from llm_modules.config import ModelConfig
from llm_modules.interop.allow import ANY, Activation, Check, Fixed, Ignored, Mapped, Slot
from llm_modules.interop.common import (
    DECODER_HEAD,
    FEATURES_OFF,
    RUN_SETTINGS,
    SCALED_ATTENTION,
    linear,
    llama_hf_fields,
    llama_layout,
    pad_token,
    sizes,
    untie_if_head_differs,
)
from llm_modules.interop.family import HF_FAMILIES, HFFamily
from llm_modules.interop.rope import rope_from_hf, rope_to_hf
from llm_modules.interop.slots import activation_from_hf, activation_to_hf, component, ffn_hidden
from llm_modules.interop.weights import Map, StateDict, WeightTable, rotary_halves
from llm_modules.registry import ConfigError

#: HF activation names a Gemma MLP (gate * up, then down) can have, first the one export writes
GATED = {
    "gelu_pytorch_tanh": ("geglu", {"approximate": "tanh"}),
    "gelu_new": ("geglu", {"approximate": "tanh"}),
    "gelu": ("geglu", {"approximate": "none"}),
    "silu": ("swiglu", {}),
    "swish": ("swiglu", {}),
    "relu": ("reglu", {}),
}

#: Gemma 1: transformers rewrites ``gelu`` to the tanh form, so exact GELU has no name there
GEMMA1_GATED = {name: value for name, value in GATED.items() if name != "gelu"}

#: transformers 5.25's GemmaConfig defaults, for keys a config.json leaves out
DEFAULTS = {
    "num_key_value_heads": 16, "head_dim": 256, "hidden_act": "gelu_pytorch_tanh", "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-6, "tie_word_embeddings": True, "attention_bias": False, "attention_dropout": 0.0,
    "initializer_range": 0.02, "rope_theta": 10000.0,
}


def embedding_is_sqrt_d_model(config: ModelConfig) -> bool:
    """The embedding scale is sqrt(d_model) as transformers computes it (``hidden_size ** 0.5``)."""
    return math.isclose(config.embedding_scale, config.d_model**0.5, rel_tol=1e-12)


#: what the gemma family represents: every ModelConfig field (``allow``)
FIELDS = {
    **sizes("hidden_size", "num_hidden_layers", "num_attention_heads"),
    **RUN_SETTINGS,
    **FEATURES_OFF,
    **DECODER_HEAD,
    "embedding_scale": Check(embedding_is_sqrt_d_model, "token embeddings scaled by sqrt(d_model): "
                             "embedding_scale = d_model ** 0.5"),
    "n_kv_heads": Mapped("num_key_value_heads"),
    "head_dim": Mapped("head_dim"),
    "d_ff": Mapped("intermediate_size"),
    "max_seq_len": Mapped("max_position_embeddings"),
    "norm": Slot("gemma_rmsnorm", eps=ANY),
    "norm_eps": Mapped("rms_norm_eps"),
    "residual": Slot("pre"),
    "activation": Activation(GEMMA1_GATED, d_ff=ANY, bias=False, dropout=ANY),
    # interleaved rotary pairs export with q/k rows permuted into Gemma's halves (weight_table)
    "position": Slot("rope", theta=ANY, fraction=1.0, interleaved=ANY, scaling=ANY, local_theta=None,
                     longrope_recompute=False),
    "bias": Mapped("attention_bias"),
    "dropout": Ignored("Gemma has no hidden-state dropout, and dropout is off at inference"),
    "attention_dropout": Mapped("attention_dropout"),
    "attention_scale": SCALED_ATTENTION,
    "tie_embeddings": Mapped("tie_word_embeddings"),
    "embedding_norm": Fixed(False),
    "init_std": Mapped("initializer_range"),
}


def no_partial_rotary(spec: dict[str, Any], family: str) -> dict[str, Any]:
    """``spec`` unless it rotates part of each head: Gemma's RoPE rotates all of head_dim
    (transformers' Gemma reads no ``partial_rotary_factor``)."""
    if "fraction" in spec:
        raise ConfigError(f"{family} config.json: partial_rotary_factor {spec['fraction']} is not a Gemma setting "
                          "(Gemma rotates the whole head); remove it from config.json")
    return spec


@HF_FAMILIES.register("gemma")
class GemmaFamily(HFFamily):
    """Gemma 1 (``GemmaForCausalLM``); the base of the Gemma 2 and Gemma 3 families."""

    model_type, kind, kind_words, fields = "gemma", "CausalLM", "a causal decoder", FIELDS
    architecture: ClassVar[str] = "GemmaForCausalLM"
    #: the config class's defaults in transformers 5.25
    defaults: ClassVar[dict[str, Any]] = DEFAULTS
    #: the activation table, and the config.json key that names the activation
    activations: ClassVar[dict] = GEMMA1_GATED
    activation_key: ClassVar[str] = "hidden_act"

    def setting(self, hf: dict[str, Any], key: str) -> Any:
        """A config.json value, or transformers' default for the family when the key is absent."""
        return hf[key] if key in hf else self.defaults[key]

    # ---- config.json -> ModelConfig ------------------------------------------------------------------------

    def config_from_hf(self, hf: dict[str, Any]) -> ModelConfig:
        self.refuse_unrepresentable(hf)
        d_model, n_heads = hf["hidden_size"], hf["num_attention_heads"]
        head_dim, attention_bias = self.setting(hf, "head_dim"), bool(self.setting(hf, "attention_bias"))
        settings = dict(
            vocab_size=hf["vocab_size"],
            d_model=d_model,
            n_layers=hf["num_hidden_layers"],
            n_heads=n_heads,
            n_kv_heads=self.setting(hf, "num_key_value_heads"),
            d_ff=hf["intermediate_size"],
            head_dim=None if head_dim == d_model // n_heads and d_model % n_heads == 0 else head_dim,
            norm="gemma_rmsnorm",
            residual="pre",
            activation=activation_from_hf(self.activation_name(hf), self.activations, self.model_type,
                                          **({"bias": False} if attention_bias else {})),  # the MLP has none
            position=self.position_from_hf(hf),
            bias=attention_bias,
            max_seq_len=self.setting(hf, "max_position_embeddings"),
            norm_eps=self.setting(hf, "rms_norm_eps"),
            attention_dropout=float(self.setting(hf, "attention_dropout") or 0.0),
            embedding_scale=d_model**0.5,
            tie_embeddings=bool(self.setting(hf, "tie_word_embeddings")),
            init_std=self.setting(hf, "initializer_range"),
            pad_token_id=pad_token(hf, hf["vocab_size"]),
        )
        return ModelConfig(**{**settings, **self.layer_settings_from_hf(hf)})

    def refuse_unrepresentable(self, hf: dict[str, Any]) -> None:
        """Config values the family reads but cannot represent (a ConfigError naming each)."""
        if hf.get("use_bidirectional_attention"):
            raise ConfigError(f"{self.model_type} config.json: use_bidirectional_attention is true (an encoder, "
                              "e.g. EmbeddingGemma); only causal Gemma decoders are supported")

    def activation_name(self, hf: dict[str, Any]) -> str:
        """Gemma 1 reads ``hidden_act``, rewriting the legacy ``gelu`` of the released configs to the
        tanh GELU; transformers 4's ``hidden_activation`` must agree with that (it is no longer read)."""
        act = self.setting(hf, "hidden_act")
        act = "gelu_pytorch_tanh" if act == "gelu" else act
        legacy = hf.get("hidden_activation")
        if legacy is not None and GATED.get(legacy) != GATED.get(act):
            raise ConfigError(f"gemma config.json: hidden_activation {legacy!r} differs from hidden_act "
                              f"{hf.get('hidden_act')!r}, which transformers 5 uses ({act!r}); make them agree")
        return act

    def position_from_hf(self, hf: dict[str, Any]) -> dict[str, Any]:
        """RoPE as ``rope_from_hf`` reads it (scaled or not), one base for every layer: transformers'
        Gemma and Gemma 2 ignore ``rope_local_base_freq``, and have no RoPE per layer type."""
        spec = rope_from_hf({k: v for k, v in hf.items() if k != "rope_local_base_freq"}, self.model_type,
                            self.defaults["rope_theta"])
        if "local_theta" in spec:
            raise ConfigError(f"{self.model_type} config.json: rope_parameters per layer type (full_attention / "
                              f"sliding_attention) are Gemma 3's; {self.model_type} has one RoPE for every layer")
        return no_partial_rotary(spec, self.model_type)

    def layer_settings_from_hf(self, hf: dict[str, Any]) -> dict[str, Any]:
        """ModelConfig fields the later Gemmas set or change (layout, windows, soft-caps); none in Gemma 1."""
        return {}

    def refine_config(self, config: ModelConfig, weights: StateDict) -> ModelConfig:
        return untie_if_head_differs(config, weights, "embed_tokens.weight", ("model.", ""))

    # ---- ModelConfig -> config.json ------------------------------------------------------------------------

    def config_to_hf(self, config: ModelConfig) -> dict[str, Any]:
        return {
            **llama_hf_fields(config, self.model_type, self.architecture, rope=self.position_to_hf(config)),
            "intermediate_size": ffn_hidden(config, gated=True),
            self.activation_key: activation_to_hf(config, self.activations),
            "attention_bias": config.bias,
        }

    def position_to_hf(self, config: ModelConfig) -> dict[str, Any]:
        return rope_to_hf(config)

    # ---- weights -------------------------------------------------------------------------------------------

    def block_norms(self) -> tuple[tuple[str, str], ...]:
        """(our name, HF name) of each block's norms."""
        return (("residual.norms.0", "input_layernorm"), ("residual.norms.1", "post_attention_layernorm"))

    #: whether queries and keys are normalized per head (Gemma 3's q_norm / k_norm)
    qk_norms: ClassVar[bool] = False

    def weight_table(self, config: ModelConfig) -> WeightTable:
        ours, theirs = "stack.layers.{i}", "model.layers.{i}"
        # interleaved rotary pairs export with each head's q/k features permuted into Gemma's halves
        # (as llama's table does), and so do the per-head QK-norm gains, applied before the rotation
        interleaved = component(config, "position")[1]["interleaved"]

        def rotary(heads: int | None) -> dict[str, Any]:
            return {"transform": rotary_halves(heads)} if interleaved and heads else {}

        heads = {"q": config.n_heads, "k": config.kv_heads, "v": None, "o": None}
        layer = (
            *(Map(f"{ours}.{o}.weight", f"{theirs}.{t}.weight") for o, t in self.block_norms()),
            *(Map(f"{ours}.attn.{a}_norm.weight", f"{theirs}.self_attn.{a}_norm.weight", **rotary(1))
              for a in ("q", "k") if self.qk_norms),
            *(m for a, n in heads.items()
              for m in linear(f"{ours}.attn.{a}", f"{theirs}.self_attn.{a}_proj", config.bias, **rotary(n))),
            *(m for a in ("gate", "up", "down") for m in linear(f"{ours}.ffn.{a}", f"{theirs}.mlp.{a}_proj", False)),
        )
        return llama_layout(self.model_type, config, layer, ignorable=("inv_freq",))
