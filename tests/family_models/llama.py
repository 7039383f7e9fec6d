"""LLaMA (and SmolLM2, a LLaMA): GQA, untied head."""

import transformers

from hf_helpers import randomize_

MODEL_TYPE = "llama"

#: SmolLM2-135M and LLaMA-2-7B as published (config.json)
PUBLISHED = {
    "llama-7b": dict(model_type="llama", vocab_size=32000, hidden_size=4096, intermediate_size=11008,
                     num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                     max_position_embeddings=2048, tie_word_embeddings=False),
}


def build(vocab_size: int = 97) -> "transformers.LlamaForCausalLM":
    config = transformers.LlamaConfig(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-5, tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": 500.0},
    )
    return randomize_(transformers.LlamaForCausalLM(config)).eval()
