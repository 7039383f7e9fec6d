"""Llama 3.x (model_type llama with llama3 RoPE scaling; SmolLM2 is a plain LLaMA): GQA, tied head,
RoPE base 500k scaled beyond a short original context, so the prompts and generations here run
past it."""

import transformers

from hf_helpers import randomize_

MODEL_TYPE = "llama"

_LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192}

#: Llama-3.2-1B, Llama-3.1-8B and SmolLM2-135M as published (config.json)
PUBLISHED = {
    "llama-3.2-1b": dict(model_type="llama", vocab_size=128256, hidden_size=2048, intermediate_size=8192,
                         num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8, head_dim=64,
                         max_position_embeddings=131072, rms_norm_eps=1e-5, tie_word_embeddings=True,
                         bos_token_id=128000, eos_token_id=128001, rope_parameters={**_LLAMA3_ROPE, "factor": 32.0}),
    "llama-3.1-8b": dict(model_type="llama", vocab_size=128256, hidden_size=4096, intermediate_size=14336,
                         num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                         max_position_embeddings=131072, rms_norm_eps=1e-5, tie_word_embeddings=False,
                         bos_token_id=128000, eos_token_id=128001, rope_parameters={**_LLAMA3_ROPE, "factor": 8.0}),
    "smollm2-135m": dict(model_type="llama", vocab_size=49152, hidden_size=576, intermediate_size=1536,
                         num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                         max_position_embeddings=8192, rms_norm_eps=1e-5, tie_word_embeddings=True, bos_token_id=0,
                         eos_token_id=0, rope_parameters={"rope_type": "default", "rope_theta": 100000.0}),
}


def build(vocab_size: int = 97) -> "transformers.LlamaForCausalLM":
    config = transformers.LlamaConfig(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-5, tie_word_embeddings=True,
        rope_parameters={**_LLAMA3_ROPE, "factor": 8.0, "original_max_position_embeddings": 8},
    )
    return randomize_(transformers.LlamaForCausalLM(config)).eval()
