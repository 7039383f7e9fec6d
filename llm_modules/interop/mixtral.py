"""Hugging Face Mixtral family (``model_type: mixtral``): a Mistral decoder (RMSNorm, pre-norm, RoPE,
GQA, no biases, an optional sliding window on every layer) whose feed-forward is ``moe``: softmax
over the experts, top-k, the k weights renormalized and kept in float32 (``fp32_combine``).

Checkpoints: the Hub's per-expert ``block_sparse_moe.experts.{j}.w1/w2/w3`` (w1 gate, w3 up, w2
down; what ``save_pretrained`` of transformers 5 writes too, and what export writes), or the fused
``mlp.experts.gate_up_proj`` / ``down_proj`` of transformers 5's modules, read as well.
"""

from __future__ import annotations

from typing import Any

from llm_modules.config import ModelConfig
from llm_modules.interop.allow import ANY, Fixed, Ignored, Mapped, Slot
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
)
from llm_modules.interop.rope import rope_from_hf
from llm_modules.interop.slots import component, ffn_hidden
from llm_modules.interop.weights import Map, WeightTable, rotary_halves

#: what the mixtral family represents: every ModelConfig field (``allow``)
FIELDS = {
    **sizes("hidden_size", "num_hidden_layers", "num_attention_heads"),
    **RUN_SETTINGS,
    **FEATURES_OFF,
    **DECODER_HEAD,
    "sliding_window": Mapped("sliding_window"),
    "n_kv_heads": Mapped("num_key_value_heads"),
    "head_dim": Mapped("head_dim"),
    "d_ff": Mapped("intermediate_size"),
    "max_seq_len": Mapped("max_position_embeddings"),
    "norm": Slot("rmsnorm", eps=ANY),
    "norm_eps": Mapped("rms_norm_eps"),
    "residual": Slot("pre"),
    "activation": MoEActivation(normalize_top_k=True, fp32_combine=True, shared_d_ff=None, shared_gate=ANY,
                                jitter_noise=ANY),
    # interleaved rotary pairs export with q/k rows permuted into halves, as LLaMA's (weight_table)
    "position": Slot("rope", theta=ANY, fraction=1.0, interleaved=ANY, scaling=ANY, local_theta=None,
                     longrope_recompute=False),
    "bias": Fixed(False),
    "dropout": Ignored("Mixtral has no hidden-state dropout, and dropout is off at inference"),
    "attention_dropout": Mapped("attention_dropout"),
    "attention_scale": SCALED_ATTENTION,
    "tie_embeddings": Mapped("tie_word_embeddings"),
    "embedding_norm": Fixed(False),
    "init_std": Mapped("initializer_range"),
}


@HF_FAMILIES.register("mixtral")
class MixtralFamily(HFFamily):
    """Mixtral-style sparse decoders (``MixtralForCausalLM``)."""

    model_type, kind, kind_words, fields = "mixtral", "CausalLM", "a causal decoder", FIELDS

    def config_from_hf(self, hf: dict[str, Any]) -> ModelConfig:
        return ModelConfig(
            **llama_fields_from_hf(hf, max_seq_len=4096 * 32, norm_eps=1e-5),
            d_ff=hf["intermediate_size"],
            norm="rmsnorm",
            residual="pre",
            activation=moe_from_hf(hf, "mixtral", n_experts(hf) or 8,
                                   jitter_noise=float(hf.get("router_jitter_noise") or 0.0)),
            position=rope_from_hf(hf, "mixtral", 1e6),
            bias=False,
            sliding_window=hf.get("sliding_window") or None,
        )

    def refine_config(self, config: ModelConfig, weights) -> ModelConfig:
        return untie_if_head_differs(config, weights, "embed_tokens.weight", ("model.", ""))

    def config_to_hf(self, config: ModelConfig) -> dict[str, Any]:
        options = component(config, "activation")[1]
        return {
            **llama_hf_fields(config, "mixtral", "MixtralForCausalLM"),
            "intermediate_size": ffn_hidden(config, gated=True),
            "sliding_window": config.sliding_window,
            "num_local_experts": options["n_experts"],
            "router_jitter_noise": float(options["jitter_noise"]),
            **moe_to_hf(config),
        }

    def weight_table(self, config: ModelConfig) -> WeightTable:
        interleaved = component(config, "position")[1]["interleaved"]
        experts = component(config, "activation")[1]["n_experts"]
        heads = {"q": config.n_heads, "k": config.kv_heads}
        ours, theirs = "stack.layers.{i}", "model.layers.{i}"
        layer = (
            Map(f"{ours}.residual.norms.0.weight", f"{theirs}.input_layernorm.weight"),
            Map(f"{ours}.residual.norms.1.weight", f"{theirs}.post_attention_layernorm.weight"),
            *(m for a in "qkvo" for m in linear(
                f"{ours}.attn.{a}", f"{theirs}.self_attn.{a}_proj", False,
                **({"transform": rotary_halves(heads[a])} if interleaved and a in heads else {}))),
            Map(f"{ours}.ffn.router.weight", f"{theirs}.block_sparse_moe.gate.weight",
                read=(f"{theirs}.block_sparse_moe.gate.weight", f"{theirs}.mlp.gate.weight")),
            expert_entries(f"{ours}.ffn", f"{theirs}.block_sparse_moe.experts", f"{theirs}.mlp.experts", experts,
                           {"gate": "w1", "up": "w3", "down": "w2"}),
        )
        return llama_layout("mixtral", config, layer)
