"""GPT-NeoX (Pythia): fused q/k/v grouped per head, partial rotary, parallel residual with two norms,
biases, untied head."""

import transformers

from hf_helpers import randomize_

MODEL_TYPE = "gpt_neox"

#: Pythia-160M as published (config.json)
PUBLISHED = {
    "pythia-160m": dict(model_type="gpt_neox", vocab_size=50304, hidden_size=768, intermediate_size=3072,
                        num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=2048,
                        rotary_pct=0.25, rotary_emb_base=10000, use_parallel_residual=True, hidden_act="gelu",
                        layer_norm_eps=1e-5, tie_word_embeddings=False),
}


def build(vocab_size: int = 97) -> "transformers.GPTNeoXForCausalLM":
    config = transformers.GPTNeoXConfig(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=128, layer_norm_eps=1e-5, tie_word_embeddings=False, use_parallel_residual=True,
        rope_parameters={"rope_type": "default", "rope_theta": 500.0, "partial_rotary_factor": 0.25},
    )
    return randomize_(transformers.GPTNeoXForCausalLM(config)).eval()
