"""Qwen3: per-head RMSNorm on queries and keys, head_dim 32 with hidden 64 and 4 heads (not hidden
/ heads), GQA, tied head (as Qwen3-0.6B)."""

import transformers

from hf_helpers import randomize_

MODEL_TYPE = "qwen3"

#: Qwen3-0.6B as published (config.json)
PUBLISHED = {
    "qwen3-0.6b": dict(model_type="qwen3", vocab_size=151936, hidden_size=1024, intermediate_size=3072,
                       num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8, head_dim=128,
                       max_position_embeddings=40960, rms_norm_eps=1e-6, rope_theta=1000000.0,
                       attention_bias=False, use_sliding_window=False, sliding_window=None, max_window_layers=28,
                       tie_word_embeddings=True),
}


def build(vocab_size: int = 97) -> "transformers.Qwen3ForCausalLM":
    config = transformers.Qwen3Config(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=32, max_position_embeddings=128, rms_norm_eps=1e-6,
        tie_word_embeddings=True, rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    )
    return randomize_(transformers.Qwen3ForCausalLM(config)).eval()
