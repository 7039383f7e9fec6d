"""Gemma 1: GeGLU (tanh), Gemma's (1 + weight) RMSNorm, embeddings scaled by sqrt(hidden_size), an
explicit head_dim unlike hidden_size / heads, multi-query attention, tied head."""

import transformers

from hf_helpers import randomize_

MODEL_TYPE = "gemma"

#: google/gemma-2b as published (config.json)
PUBLISHED = {
    "gemma-2b": dict(model_type="gemma", vocab_size=256000, hidden_size=2048, intermediate_size=16384,
                     num_hidden_layers=18, num_attention_heads=8, num_key_value_heads=1, head_dim=256,
                     hidden_act="gelu", max_position_embeddings=8192, rms_norm_eps=1e-6, tie_word_embeddings=True),
}


def build(vocab_size: int = 97) -> "transformers.GemmaForCausalLM":
    config = transformers.GemmaConfig(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=1, head_dim=24, max_position_embeddings=128, rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 500.0}, pad_token_id=0, bos_token_id=2, eos_token_id=1,
    )
    return randomize_(transformers.GemmaForCausalLM(config)).eval()
