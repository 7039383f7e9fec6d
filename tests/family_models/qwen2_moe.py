"""Qwen2-MoE (Qwen1.5-MoE): q/k/v biases, top-k weights not renormalized, a shared expert with its
sigmoid gate."""

import transformers

from hf_helpers import randomize_

MODEL_TYPE = "qwen2_moe"

#: Qwen1.5-MoE-A2.7B as published (config.json)
PUBLISHED = {
    "qwen2-moe-a2.7b": dict(model_type="qwen2_moe", vocab_size=151936, hidden_size=2048, intermediate_size=5632,
                            moe_intermediate_size=1408, shared_expert_intermediate_size=5632, num_hidden_layers=24,
                            num_attention_heads=16, num_key_value_heads=16, num_experts=60, num_experts_per_tok=4,
                            norm_topk_prob=False, max_position_embeddings=8192, rms_norm_eps=1e-6, rope_theta=1e6,
                            qkv_bias=True, decoder_sparse_step=1, use_sliding_window=False,
                            tie_word_embeddings=False),
}


def build(vocab_size: int = 97) -> "transformers.Qwen2MoeForCausalLM":
    config = transformers.Qwen2MoeConfig(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=40, moe_intermediate_size=32,
        shared_expert_intermediate_size=40, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        num_experts=4, num_experts_per_tok=2, norm_topk_prob=False, max_position_embeddings=128, rms_norm_eps=1e-6,
        tie_word_embeddings=False, rope_parameters={"rope_type": "default", "rope_theta": 500.0},
    )
    return randomize_(transformers.Qwen2MoeForCausalLM(config)).eval()
