"""Phi-3: fused qkv_proj (GQA) and gate_up_proj, partial rotary with longrope scaling, a sliding
window on every layer."""

import torch
import transformers

from hf_helpers import randomize_

MODEL_TYPE = "phi3"

#: Phi-3-mini-4k-instruct as published (config.json)
PUBLISHED = {
    "phi3-mini-4k": dict(model_type="phi3", vocab_size=32064, hidden_size=3072, intermediate_size=8192,
                         num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                         max_position_embeddings=4096, original_max_position_embeddings=4096, rms_norm_eps=1e-5,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, sliding_window=2047,
                         tie_word_embeddings=False, bos_token_id=1, eos_token_id=32000, pad_token_id=32000),
}


def factors(n: int, seed: int) -> list[float]:
    return (1.0 + 2 * torch.rand(n, generator=torch.Generator().manual_seed(seed))).tolist()


def build(vocab_size: int = 97) -> "transformers.Phi3ForCausalLM":
    # head_dim 16, partial rotary 0.5: 8 rotary dims, 4 factors; windows of 6 tokens; beyond 8
    # positions the long factors apply
    config = transformers.Phi3Config(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, original_max_position_embeddings=8, rms_norm_eps=1e-5,
        partial_rotary_factor=0.5, sliding_window=6, tie_word_embeddings=False, pad_token_id=1, bos_token_id=1, eos_token_id=2,
        rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0, "partial_rotary_factor": 0.5,
                         "short_factor": factors(4, 0), "long_factor": factors(4, 1)},
    )
    return randomize_(transformers.Phi3ForCausalLM(config)).eval()
