"""Qwen2/2.5: q/k/v biases only, tied head (as the small Qwen2.5 models), and a window on the
second layer only (use_sliding_window, max_window_layers 1) shorter than the prompts plus the
generated tokens."""

import transformers

from hf_helpers import randomize_

MODEL_TYPE = "qwen2"

#: Qwen2.5-0.5B and Qwen2.5-7B as published (config.json)
PUBLISHED = {
    "qwen2.5-0.5b": dict(model_type="qwen2", vocab_size=151936, hidden_size=896, intermediate_size=4864,
                         num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                         max_position_embeddings=32768, rms_norm_eps=1e-6, rope_theta=1000000.0,
                         use_sliding_window=False, sliding_window=32768, max_window_layers=24,
                         tie_word_embeddings=True),
    "qwen2.5-7b": dict(model_type="qwen2", vocab_size=152064, hidden_size=3584, intermediate_size=18944,
                       num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                       max_position_embeddings=131072, rms_norm_eps=1e-6, rope_theta=1000000.0,
                       use_sliding_window=False, sliding_window=131072, max_window_layers=28,
                       tie_word_embeddings=False),
}


def build(vocab_size: int = 97) -> "transformers.Qwen2ForCausalLM":
    config = transformers.Qwen2Config(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-6, tie_word_embeddings=True,
        use_sliding_window=True, sliding_window=5, max_window_layers=1,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    )
    return randomize_(transformers.Qwen2ForCausalLM(config)).eval()
