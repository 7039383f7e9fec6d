"""Hugging Face Mistral family (``model_type: mistral``): a LLaMA without any bias, whose every layer
attends through one sliding window (``sliding_window``; null in v0.2/v0.3, where it is a LLaMA).

transformers' MistralModel windows every layer alike whatever ``layer_types`` says (it only warns),
and reads neither ``attention_bias`` nor ``mlp_bias``: its projections never have biases.

A Mistral without a window is exactly a LLaMA, so export picks ``llama`` for it (the first family
that fits, by structure); ``family="mistral"`` (``--family mistral``) writes it as a Mistral.
"""

from __future__ import annotations

from typing import Any

from llm_modules.config import ModelConfig
from llm_modules.interop import llama
from llm_modules.interop.allow import ANY, Activation, Fixed, Mapped
from llm_modules.interop.family import HF_FAMILIES
from llm_modules.interop.llama import LlamaFamily
from llm_modules.registry import ConfigError

#: what the mistral family represents: LLaMA's fields, no biases, a window on every layer
FIELDS = {
    **llama.FIELDS,
    # MistralConfig takes any head_dim (Mistral-Nemo: 5120 = 32 heads x 160, head_dim 128)
    "d_model": Mapped("hidden_size"),
    "bias": Fixed(False),
    "activation": Activation(llama._GATED, d_ff=ANY, bias=False, dropout=ANY),
    "sliding_window": Mapped("sliding_window"),
}

#: MistralConfig's defaults where they differ from what the LLaMA reader assumes for a missing key
DEFAULTS = {"num_key_value_heads": 8, "max_position_embeddings": 4096 * 32, "sliding_window": 4096}


@HF_FAMILIES.register("mistral")
class MistralFamily(LlamaFamily):
    """Mistral 7B (v0.1 with its 4096-token window, v0.2/v0.3 without), Mistral-Nemo (``MistralForCausalLM``)."""

    model_type, fields = "mistral", FIELDS

    def config_from_hf(self, hf: dict[str, Any]) -> ModelConfig:
        hf = {**DEFAULTS, **hf}
        window = hf["sliding_window"]
        if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 1):
            raise ConfigError(f"mistral config.json: sliding_window={window!r} is not a window; "
                              "use a positive number of tokens, or null for none")
        expected = "sliding_attention" if window is not None else "full_attention"
        odd = [t for t in hf.get("layer_types") or [] if t != expected]
        if odd:
            raise ConfigError(
                f"mistral config.json: layer_types lists {odd[0]!r}, but MistralForCausalLM gives every layer "
                f"{'the sliding window' if window is not None else 'full attention'} whatever layer_types says; "
                "remove layer_types, or load it as the model_type that alternates layers (e.g. ministral)"
            )
        # MistralForCausalLM has no bias anywhere, whatever these keys say
        config = super().config_from_hf({**hf, "attention_bias": False, "mlp_bias": False})
        return config.replace(sliding_window=window)

    def config_to_hf(self, config: ModelConfig) -> dict[str, Any]:
        hf = super().config_to_hf(config)
        for key in ("attention_bias", "mlp_bias"):  # not MistralConfig's
            hf.pop(key)
        return {**hf, "model_type": "mistral", "architectures": ["MistralForCausalLM"],
                "sliding_window": config.sliding_window}
