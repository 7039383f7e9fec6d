"""Mixtral: routed experts (softmax, top-2, renormalized), GQA, a sliding window shorter than the
rows, untied head."""

import transformers

from hf_helpers import randomize_

MODEL_TYPE = "mixtral"

#: Mixtral-8x7B-v0.1 as published (config.json)
PUBLISHED = {
    "mixtral-8x7b": dict(model_type="mixtral", vocab_size=32000, hidden_size=4096, intermediate_size=14336,
                         num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, num_local_experts=8,
                         num_experts_per_tok=2, max_position_embeddings=32768, rms_norm_eps=1e-5,
                         rope_theta=1e6, sliding_window=None, tie_word_embeddings=False),
}


def build(vocab_size: int = 97) -> "transformers.MixtralForCausalLM":
    config = transformers.MixtralConfig(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2, max_position_embeddings=128,
        rms_norm_eps=1e-5, sliding_window=6, tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": 500.0},
    )
    return randomize_(transformers.MixtralForCausalLM(config)).eval()
