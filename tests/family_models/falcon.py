"""Falcon (7B layout): fused q/k/v with one key/value head (multi_query), attention and MLP side by side
on one shared norm, RoPE, no biases, tied head."""

import transformers

from hf_helpers import randomize_

MODEL_TYPE = "falcon"

#: Falcon-7B as published (config.json)
PUBLISHED = {
    "falcon-7b": dict(model_type="falcon", vocab_size=65024, hidden_size=4544, num_hidden_layers=32,
                      num_attention_heads=71, multi_query=True, new_decoder_architecture=False, parallel_attn=True,
                      bias=False, alibi=False, layer_norm_epsilon=1e-5, tie_word_embeddings=True),
}


def build(vocab_size: int = 97) -> "transformers.FalconForCausalLM":
    config = transformers.FalconConfig(
        vocab_size=vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, multi_query=True,
        new_decoder_architecture=False, parallel_attn=True, bias=False, max_position_embeddings=128,
        rope_parameters={"rope_type": "default", "rope_theta": 500.0}, tie_word_embeddings=True,
    )
    return randomize_(transformers.FalconForCausalLM(config)).eval()
