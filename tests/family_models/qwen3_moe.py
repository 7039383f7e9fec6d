"""Qwen3-MoE: QK-norm per head, a head size other than d_model / heads, top-k weights renormalized,
no shared expert."""

import transformers

from hf_helpers import randomize_

MODEL_TYPE = "qwen3_moe"

#: Qwen3-30B-A3B as published (config.json)
PUBLISHED = {
    "qwen3-moe-30b-a3b": dict(model_type="qwen3_moe", vocab_size=151936, hidden_size=2048, intermediate_size=6144,
                              moe_intermediate_size=768, num_hidden_layers=48, num_attention_heads=32,
                              num_key_value_heads=4, head_dim=128, num_experts=128, num_experts_per_tok=8,
                              norm_topk_prob=True, max_position_embeddings=40960, rms_norm_eps=1e-6, rope_theta=1e6,
                              attention_bias=False, decoder_sparse_step=1, use_sliding_window=False,
                              tie_word_embeddings=False),
}


def build(vocab_size: int = 97) -> "transformers.Qwen3MoeForCausalLM":
    config = transformers.Qwen3MoeConfig(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=48, moe_intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=24, num_experts=4, num_experts_per_tok=2,
        norm_topk_prob=True, max_position_embeddings=128, rms_norm_eps=1e-6, tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": 500.0},
    )
    return randomize_(transformers.Qwen3MoeForCausalLM(config)).eval()
