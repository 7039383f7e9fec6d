"""Gemma 2: four norms per block, soft-capped attention scores and logits, query_pre_attn_scalar
unlike head_dim, sliding-window layers alternating with full ones (window shorter than the prompts)."""

import transformers

from hf_helpers import randomize_

MODEL_TYPE = "gemma2"

#: google/gemma-2-2b as published (config.json)
PUBLISHED = {
    "gemma-2-2b": dict(model_type="gemma2", vocab_size=256000, hidden_size=2304, intermediate_size=9216,
                       num_hidden_layers=26, num_attention_heads=8, num_key_value_heads=4, head_dim=256,
                       hidden_activation="gelu_pytorch_tanh", max_position_embeddings=8192, rms_norm_eps=1e-6,
                       query_pre_attn_scalar=256, sliding_window=4096, attn_logit_softcapping=50.0,
                       final_logit_softcapping=30.0, tie_word_embeddings=True),
}


def build(vocab_size: int = 97) -> "transformers.Gemma2ForCausalLM":
    config = transformers.Gemma2Config(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=24, max_position_embeddings=128, rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 500.0}, query_pre_attn_scalar=20, sliding_window=4,
        attn_logit_softcapping=5.0, final_logit_softcapping=3.0, pad_token_id=0, bos_token_id=2, eos_token_id=1,
    )
    return randomize_(transformers.Gemma2ForCausalLM(config)).eval()
