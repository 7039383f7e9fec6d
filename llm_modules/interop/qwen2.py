"""Hugging Face Qwen2 / Qwen2.5 family (``model_type: qwen2``): a LLaMA whose query, key and value
projections have biases and whose output projection and MLP have none.

Sliding windows: ``use_sliding_window: false`` (every published Qwen2/2.5) turns the window off
whatever ``sliding_window`` and ``max_window_layers`` say; with ``true``, the layers listed as
``sliding_attention`` in ``layer_types`` attend through it (without ``layer_types``: layer i when
i >= ``max_window_layers``), which is our ``layer_types`` (every layer sliding: null).
"""

from __future__ import annotations

from typing import Any

from llm_modules.config import ModelConfig
from llm_modules.interop import llama
from llm_modules.interop.allow import ANY, Activation, Check, Ignored, Mapped
from llm_modules.interop.common import linear, llama_layout
from llm_modules.interop.family import HF_FAMILIES
from llm_modules.interop.llama import LlamaFamily
from llm_modules.interop.slots import component
from llm_modules.interop.weights import Map, WeightTable, rotary_halves
from llm_modules.registry import ConfigError

_HF_LAYER_TYPES = {"sliding_attention": "sliding", "full_attention": "full"}


def qkv_bias(config: ModelConfig) -> bool:
    """Whether the query, key and value projections are built with biases."""
    return config.bias if config.qkv_bias is None else config.qkv_bias


def out_bias(config: ModelConfig) -> bool:
    """Whether the output projection is built with a bias."""
    return config.bias if config.out_bias is None else config.out_bias


def mlp_bias(config: ModelConfig) -> bool:
    return bool(component(config, "activation")[1]["bias"])


#: the window fields of Qwen2 and Qwen3 (config.json: use_sliding_window, sliding_window, max_window_layers,
#: layer_types; windows_from_hf / windows_to_hf)
WINDOWS = {
    "sliding_window": Mapped("sliding_window"),
    "layer_types": Mapped("layer_types"),
}

#: what the qwen2 family represents: LLaMA's fields with q/k/v-only biases and per-layer windows
FIELDS = {
    **llama.FIELDS,
    **WINDOWS,
    # Qwen2Config takes any head_dim (read where config.json has one)
    "d_model": Mapped("hidden_size"),
    "bias": Ignored("what it decides is checked projection by projection: qkv_bias, out_bias, the activation's bias"),
    "qkv_bias": Check(qkv_bias, "biases on the query, key and value projections (qkv_bias: true)",
                      lambda c, f: f"q/k/v projections without bias (qkv_bias={c.qkv_bias!r}, bias={c.bias!r})"),
    "out_bias": Check(lambda c: not out_bias(c), "no bias on the output projection (out_bias: false)",
                      lambda c, f: f"output projection with a bias (out_bias={c.out_bias!r}, bias={c.bias!r})"),
    "activation": Activation(llama._GATED, d_ff=ANY, bias=False, dropout=ANY),
}

#: Qwen2Config's defaults where they differ from what the LLaMA reader assumes for a missing key
DEFAULTS = {"num_key_value_heads": 32, "max_position_embeddings": 32768, "use_sliding_window": False,
            "sliding_window": 4096, "max_window_layers": 28}


def windows_from_hf(hf: dict[str, Any], family: str) -> dict[str, Any]:
    """``sliding_window`` and ``layer_types`` of a Qwen2/Qwen3 config.json (see the module docstring)."""
    n_layers = hf["num_hidden_layers"]
    window = hf["sliding_window"] if hf["use_sliding_window"] else None
    if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 1):
        raise ConfigError(f"{family} config.json: sliding_window={window!r} is not a window; use a positive number "
                          "of tokens, or use_sliding_window: false")
    hf_types = hf.get("layer_types")
    if hf_types is None:
        first = hf["max_window_layers"]
        hf_types = ["sliding_attention" if window is not None and i >= first else "full_attention"
                    for i in range(n_layers)]
    if not isinstance(hf_types, list) or len(hf_types) != n_layers:
        raise ConfigError(f"{family} config.json: layer_types must list one entry per layer "
                          f"(num_hidden_layers={n_layers}); got {hf_types!r}")
    odd = [t for t in hf_types if t not in _HF_LAYER_TYPES]
    if odd:
        raise ConfigError(f"{family} config.json: layer type {odd[0]!r} is not supported (only sliding_attention "
                          "and full_attention)")
    types = [_HF_LAYER_TYPES[t] for t in hf_types]
    if "sliding" in types and window is None:
        raise ConfigError(
            f"{family} config.json: layer_types lists sliding_attention layers but there is no window "
            f"(use_sliding_window={hf['use_sliding_window']!r}, sliding_window={hf['sliding_window']!r}); set "
            "use_sliding_window: true and sliding_window, or make those layers full_attention"
        )
    if "sliding" not in types:
        return {"sliding_window": None, "layer_types": None}
    return {"sliding_window": window, "layer_types": None if "full" not in types else types}


def windows_to_hf(config: ModelConfig) -> dict[str, Any]:
    """Qwen2/Qwen3 config.json's window keys: ``layer_types`` spelled out (transformers reads it
    before ``max_window_layers``), which is set to the first sliding layer for older readers."""
    sliding = config.sliding_layers
    return {
        "use_sliding_window": any(sliding),
        "sliding_window": config.sliding_window if any(sliding) else None,
        "max_window_layers": sliding.index(True) if any(sliding) else config.n_layers,
        "layer_types": ["sliding_attention" if s else "full_attention" for s in sliding],
    }


@HF_FAMILIES.register("qwen2")
class Qwen2Family(LlamaFamily):
    """Qwen2 and Qwen2.5 (``Qwen2ForCausalLM``)."""

    model_type, fields, architecture = "qwen2", FIELDS, "Qwen2ForCausalLM"
    defaults = DEFAULTS

    def config_from_hf(self, hf: dict[str, Any]) -> ModelConfig:
        hf = {**self.defaults, **hf}
        windows = windows_from_hf(hf, self.model_type)
        config = super().config_from_hf(self.llama_keys(hf))
        return config.replace(**windows, **self.own_fields(hf))

    def llama_keys(self, hf: dict[str, Any]) -> dict[str, Any]:
        """``hf`` as the LLaMA reader takes it: Qwen2's modules ignore attention_bias and mlp_bias."""
        return {**hf, "attention_bias": False, "mlp_bias": False}

    def own_fields(self, hf: dict[str, Any]) -> dict[str, Any]:
        """The fields the LLaMA reader does not set: Qwen2's q/k/v biases."""
        return {"qkv_bias": True}

    def config_to_hf(self, config: ModelConfig) -> dict[str, Any]:
        hf = super().config_to_hf(config)
        for key in ("attention_bias", "mlp_bias"):  # Qwen2's biases are fixed, not config keys
            hf.pop(key)
        return {**hf, **windows_to_hf(config), "model_type": self.model_type,
                "architectures": [self.architecture]}

    def weight_table(self, config: ModelConfig) -> WeightTable:
        """LLaMA's layout with a bias per projection as the model has it, and Qwen3's per-head
        q_norm/k_norm; interleaved rotary pairs export as halves (rows of q and k, and the q/k
        norms' features, permuted alike)."""
        interleaved = component(config, "position")[1]["interleaved"]
        heads = {"q": config.n_heads, "k": config.kv_heads}
        biases = {"q": qkv_bias(config), "k": qkv_bias(config), "v": qkv_bias(config), "o": out_bias(config)}
        ours, theirs = "stack.layers.{i}", "model.layers.{i}"

        def halves(a: str, n_heads: int) -> dict[str, Any]:
            return {"transform": rotary_halves(n_heads)} if interleaved and a in heads else {}

        norms = tuple(Map(f"{ours}.attn.{a}_norm.weight", f"{theirs}.self_attn.{a}_norm.weight", **halves(a, 1))
                      for a in "qk") if config.qk_norm == "head" else ()
        layer = (
            Map(f"{ours}.residual.norms.0.weight", f"{theirs}.input_layernorm.weight"),
            Map(f"{ours}.residual.norms.1.weight", f"{theirs}.post_attention_layernorm.weight"),
            *(m for a in "qkvo" for m in linear(f"{ours}.attn.{a}", f"{theirs}.self_attn.{a}_proj", biases[a],
                                                **halves(a, heads.get(a, 0)))),
            *norms,
            *(m for a in ("gate", "up", "down")
              for m in linear(f"{ours}.ffn.{a}", f"{theirs}.mlp.{a}_proj", mlp_bias(config))),
        )
        return llama_layout(self.model_type, config, layer)
