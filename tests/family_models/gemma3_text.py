"""Gemma 3 (text): Gemma 2's block with per-head QK-norm (Gemma RMSNorm), a final-logit soft-cap and
no attention soft-cap, sliding layers among full ones (window shorter than the prompts) with their
own RoPE base."""

import transformers

from hf_helpers import randomize_

MODEL_TYPE = "gemma3_text"

#: google/gemma-3-1b-pt as published (config.json)
PUBLISHED = {
    "gemma-3-1b": dict(model_type="gemma3_text", vocab_size=262144, hidden_size=1152, intermediate_size=6912,
                       num_hidden_layers=26, num_attention_heads=4, num_key_value_heads=1, head_dim=256,
                       hidden_activation="gelu_pytorch_tanh", max_position_embeddings=32768, rms_norm_eps=1e-6,
                       query_pre_attn_scalar=256, sliding_window=512, sliding_window_pattern=6,
                       rope_theta=1_000_000.0, rope_local_base_freq=10_000.0, attn_logit_softcapping=None,
                       final_logit_softcapping=None, tie_word_embeddings=True),
}


def build(vocab_size: int = 97) -> "transformers.Gemma3ForCausalLM":
    config = transformers.Gemma3TextConfig(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, head_dim=24, max_position_embeddings=128, rms_norm_eps=1e-5,
        rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 500.0},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 20.0}},
        layer_types=["sliding_attention", "full_attention", "sliding_attention"], query_pre_attn_scalar=20,
        sliding_window=4, final_logit_softcapping=3.0, pad_token_id=0, bos_token_id=2, eos_token_id=1,
    )
    return randomize_(transformers.Gemma3ForCausalLM(config)).eval()
