"""Mistral: GQA, an explicit head_dim (not hidden / heads), and a sliding window shorter than the
prompts plus the generated tokens, so that logits and cached decoding run past it."""

import transformers

from hf_helpers import randomize_

MODEL_TYPE = "mistral"

#: Mistral-7B-v0.1 as published (config.json)
PUBLISHED = {
    "mistral-7b": dict(model_type="mistral", vocab_size=32000, hidden_size=4096, intermediate_size=14336,
                       num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                       max_position_embeddings=32768, rms_norm_eps=1e-5, sliding_window=4096,
                       tie_word_embeddings=False, rope_theta=10000.0),
}


def build(vocab_size: int = 97) -> "transformers.MistralForCausalLM":
    config = transformers.MistralConfig(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=24, max_position_embeddings=128, rms_norm_eps=1e-5, sliding_window=5,
        tie_word_embeddings=False, rope_parameters={"rope_type": "default", "rope_theta": 1000.0},
    )
    return randomize_(transformers.MistralForCausalLM(config)).eval()
