"""Hugging Face Qwen2-MoE family (``model_type: qwen2_moe``, Qwen1.5-MoE): a Qwen2 decoder (RMSNorm,
pre-norm, RoPE, GQA, biases on q/k/v only) whose feed-forward is ``moe`` with Qwen's conventions:
softmax, top-k, the weights renormalized only with ``norm_topk_prob`` and rounded to the
activations' dtype before they scale the experts (``fp32_combine: false``), and a shared expert
(``shared_expert_intermediate_size``) scaled by its sigmoid gate (``shared_expert_gate``).

``QwenMoeFamily`` holds what Qwen2-MoE and Qwen3-MoE share; each family says how its attention, its
shared expert and its sliding window read and write (small hooks).

What is refused: layers that are not all MoE (``mlp_only_layers``, ``decoder_sparse_step`` > 1);
a sliding window named by ``layer_types`` while ``use_sliding_window`` is false (transformers would
then attend through a window of 0). ``sliding_window`` is ignored when ``use_sliding_window`` is
false, as transformers ignores it. ``intermediate_size`` (the hidden size of the dense layers an
all-MoE model does not have) is not kept; export writes the shared expert's size there.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar

from llm_modules.config import ModelConfig
from llm_modules.interop.allow import ANY, Fixed, Ignored, Mapped, Rule, Slot
from llm_modules.interop.common import (
    DECODER_HEAD,
    FEATURES_OFF,
    RUN_SETTINGS,
    SCALED_ATTENTION,
    linear,
    llama_fields_from_hf,
    llama_hf_fields,
    llama_layout,
    sizes,
    untie_if_head_differs,
)
from llm_modules.interop.family import HF_FAMILIES, HFFamily
from llm_modules.interop.moe_experts import (
    MoEActivation,
    expert_entries,
    moe_from_hf,
    moe_to_hf,
    n_experts,
    refuse_dense_layers,
)
from llm_modules.interop.rope import rope_from_hf
from llm_modules.interop.slots import component, ffn_hidden
from llm_modules.interop.weights import Map, WeightTable, rotary_halves
from llm_modules.registry import ConfigError

#: the fields both Qwen-MoE families map the same way (``allow``)
QWEN_MOE_FIELDS: dict[str, Rule] = {
    **sizes("hidden_size", "num_hidden_layers", "num_attention_heads"),
    **RUN_SETTINGS,
    **FEATURES_OFF,
    **DECODER_HEAD,
    "sliding_window": Mapped("sliding_window"),
    "n_kv_heads": Mapped("num_key_value_heads"),
    # not a field of the config classes, but their attention reads it from config.json when present
    "head_dim": Mapped("head_dim"),
    "d_ff": Mapped("moe_intermediate_size"),
    "max_seq_len": Mapped("max_position_embeddings"),
    "norm": Slot("rmsnorm", eps=ANY),
    "norm_eps": Mapped("rms_norm_eps"),
    "residual": Slot("pre"),
    # interleaved rotary pairs export with q/k rows permuted into halves, as LLaMA's (weight_table)
    "position": Slot("rope", theta=ANY, fraction=1.0, interleaved=ANY, scaling=ANY, local_theta=None,
                     longrope_recompute=False),
    "dropout": Ignored("Qwen-MoE has no hidden-state dropout, and dropout is off at inference"),
    "attention_dropout": Mapped("attention_dropout"),
    "attention_scale": SCALED_ATTENTION,
    "tie_embeddings": Mapped("tie_word_embeddings"),
    "embedding_norm": Fixed(False),
    "init_std": Mapped("initializer_range"),
}

FIELDS = {
    **QWEN_MOE_FIELDS,
    "activation": MoEActivation(shared_expert=True, normalize_top_k=ANY, fp32_combine=False, shared_d_ff=ANY,
                                shared_gate=True, jitter_noise=0.0),
    "layer_types": Mapped("layer_types"),
    "bias": Fixed(False),
    "qkv_bias": Mapped("qkv_bias"),
}


class QwenMoeFamily(HFFamily):
    """What the Qwen-MoE families share: config.json both ways and the weight table, with hooks
    for the attention, the shared expert and the sliding window."""

    kind, kind_words = "CausalLM", "a causal decoder"
    #: the ``architectures`` entry of config.json
    architecture: ClassVar[str]

    # ---- hooks ----------------------------------------------------------------------------------------------

    @abc.abstractmethod
    def attention_from_hf(self, hf: dict[str, Any]) -> dict[str, Any]:
        """ModelConfig fields of the attention's biases and norms."""

    @abc.abstractmethod
    def attention_to_hf(self, config: ModelConfig) -> dict[str, Any]:
        """config.json keys of the attention's biases."""

    @abc.abstractmethod
    def window_from_hf(self, hf: dict[str, Any]) -> dict[str, Any]:
        """``sliding_window`` and ``layer_types``."""

    @abc.abstractmethod
    def window_to_hf(self, config: ModelConfig) -> dict[str, Any]:
        """config.json keys of the sliding window."""

    def shared_from_hf(self, hf: dict[str, Any]) -> dict[str, Any]:
        """The moe slot's shared-expert options."""
        return {}

    def shared_to_hf(self, config: ModelConfig) -> dict[str, Any]:
        return {}

    @abc.abstractmethod
    def attention_entries(self, ours: str, theirs: str, config: ModelConfig, halves: dict[str, Any]) -> tuple[Map, ...]:
        """The attention's weight entries; ``halves[p]``: the rotary transform of projection p, if any."""

    def shared_entries(self, ours: str, theirs: str) -> tuple[Map, ...]:
        return ()

    # ---- shared ---------------------------------------------------------------------------------------------

    def config_from_hf(self, hf: dict[str, Any]) -> ModelConfig:
        refuse_dense_layers(hf, self.name)
        return ModelConfig(
            **llama_fields_from_hf(hf, max_seq_len=32768, norm_eps=1e-6),
            d_ff=hf["moe_intermediate_size"],
            norm="rmsnorm",
            residual="pre",
            activation=moe_from_hf(hf, self.name, n_experts(hf), normalize_top_k=bool(hf.get("norm_topk_prob")),
                                   fp32_combine=False, **self.shared_from_hf(hf)),
            position=rope_from_hf(hf, self.model_type, 10000.0),
            **self.attention_from_hf(hf),
            **self.window_from_hf(hf),
        )

    def refine_config(self, config: ModelConfig, weights) -> ModelConfig:
        return untie_if_head_differs(config, weights, "embed_tokens.weight", ("model.", ""))

    def config_to_hf(self, config: ModelConfig) -> dict[str, Any]:
        options = component(config, "activation")[1]
        return {
            **llama_hf_fields(config, self.model_type, self.architecture),
            "num_experts": options["n_experts"],
            "moe_intermediate_size": ffn_hidden(config, gated=True),
            "norm_topk_prob": bool(options["normalize_top_k"]),
            "decoder_sparse_step": 1,
            "mlp_only_layers": [],
            **self.shared_to_hf(config),
            **moe_to_hf(config),
            **self.attention_to_hf(config),
            **self.window_to_hf(config),
        }

    def weight_table(self, config: ModelConfig) -> WeightTable:
        interleaved = component(config, "position")[1]["interleaved"]
        experts = component(config, "activation")[1]["n_experts"]
        heads = {"q": config.n_heads, "k": config.kv_heads}
        halves = {p: rotary_halves(n) for p, n in heads.items()} if interleaved else {}
        ours, theirs = "stack.layers.{i}", "model.layers.{i}"
        layer = (
            Map(f"{ours}.residual.norms.0.weight", f"{theirs}.input_layernorm.weight"),
            Map(f"{ours}.residual.norms.1.weight", f"{theirs}.post_attention_layernorm.weight"),
            *self.attention_entries(f"{ours}.attn", f"{theirs}.self_attn", config, halves),
            Map(f"{ours}.ffn.router.weight", f"{theirs}.mlp.gate.weight"),
            expert_entries(f"{ours}.ffn", f"{theirs}.mlp.experts", f"{theirs}.mlp.experts", experts,
                           {"gate": "gate_proj", "up": "up_proj", "down": "down_proj"}),
            *self.shared_entries(f"{ours}.ffn", f"{theirs}.mlp"),
        )
        return llama_layout(self.model_type, config, layer)


def projections(ours: str, theirs: str, biases: dict[str, bool], halves: dict[str, Any]) -> tuple[Map, ...]:
    """q, k, v, o with the bias each has, q and k through their rotary transform when interleaved."""
    return tuple(m for p in "qkvo" for m in linear(
        f"{ours}.{p}", f"{theirs}.{p}_proj", biases[p], **({"transform": halves[p]} if p in halves else {})))


@HF_FAMILIES.register("qwen2_moe")
class Qwen2MoeFamily(QwenMoeFamily):
    """Qwen1.5-MoE-style decoders (``Qwen2MoeForCausalLM``)."""

    model_type, architecture, fields = "qwen2_moe", "Qwen2MoeForCausalLM", FIELDS

    def attention_from_hf(self, hf: dict[str, Any]) -> dict[str, Any]:
        return {"bias": False, "qkv_bias": True if hf.get("qkv_bias", True) else None}

    def attention_to_hf(self, config: ModelConfig) -> dict[str, Any]:
        return {"qkv_bias": bool(config.bias if config.qkv_bias is None else config.qkv_bias)}

    def window_from_hf(self, hf: dict[str, Any]) -> dict[str, Any]:
        n_layers, types = hf["num_hidden_layers"], hf.get("layer_types")
        if not hf.get("use_sliding_window"):
            if types and "sliding_attention" in types:
                raise ConfigError(
                    "qwen2_moe config.json: layer_types has sliding_attention layers but use_sliding_window is "
                    "false (transformers would attend through a window of 0); set use_sliding_window: true, or "
                    "make every layer full_attention"
                )
            return {}
        if types is None:  # transformers' default pattern
            bound = hf.get("max_window_layers", 28)
            types = ["sliding_attention" if (i + 1) % 2 and i < bound else "full_attention" for i in range(n_layers)]
        unknown = sorted(set(types) - {"sliding_attention", "full_attention"})
        if unknown:
            raise ConfigError(f"qwen2_moe config.json: layer type {unknown[0]!r} is not supported (only "
                              "sliding_attention and full_attention)")
        sliding = [t == "sliding_attention" for t in types]
        if not any(sliding):
            return {}
        return {"sliding_window": hf["sliding_window"],
                "layer_types": None if all(sliding) else ["sliding" if s else "full" for s in sliding]}

    def window_to_hf(self, config: ModelConfig) -> dict[str, Any]:
        sliding = config.sliding_layers
        return {
            "use_sliding_window": any(sliding),
            "sliding_window": config.sliding_window,
            "max_window_layers": config.n_layers,
            "layer_types": ["sliding_attention" if s else "full_attention" for s in sliding],
        }

    def shared_from_hf(self, hf: dict[str, Any]) -> dict[str, Any]:
        size = hf.get("shared_expert_intermediate_size")
        if not size:
            raise ConfigError(f"qwen2_moe config.json: shared_expert_intermediate_size={size!r}; a Qwen2-MoE model "
                              "here has a shared expert (a positive size)")
        return {"shared_d_ff": size}

    def shared_to_hf(self, config: ModelConfig) -> dict[str, Any]:
        size = component(config, "activation")[1]["shared_d_ff"]
        # intermediate_size sizes only dense layers, which an all-MoE model has none of
        return {"shared_expert_intermediate_size": size, "intermediate_size": size}

    def attention_entries(self, ours, theirs, config, halves):
        qkv = bool(config.bias if config.qkv_bias is None else config.qkv_bias)
        return projections(ours, theirs, {"q": qkv, "k": qkv, "v": qkv, "o": False}, halves)

    def shared_entries(self, ours, theirs):
        return (
            *(Map(f"{ours}.shared.{p}.weight", f"{theirs}.shared_expert.{p}_proj.weight")
              for p in ("gate", "up", "down")),
            Map(f"{ours}.shared_gate.weight", f"{theirs}.shared_expert_gate.weight"),
        )
