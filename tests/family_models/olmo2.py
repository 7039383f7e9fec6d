"""OLMo 2: norms after each sublayer, RMSNorm on the whole q and k projections, GQA, untied head."""

import transformers

from hf_helpers import randomize_

MODEL_TYPE = "olmo2"

#: OLMo-2-0425-1B and OLMo-2-1124-7B as published (config.json)
PUBLISHED = {
    "olmo-2-1b": dict(model_type="olmo2", vocab_size=100352, hidden_size=2048, intermediate_size=8192,
                      num_hidden_layers=16, num_attention_heads=16, num_key_value_heads=16,
                      max_position_embeddings=4096, rope_theta=500000, rms_norm_eps=1e-6, attention_bias=False,
                      tie_word_embeddings=False),
    "olmo-2-7b": dict(model_type="olmo2", vocab_size=100352, hidden_size=4096, intermediate_size=11008,
                      num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                      max_position_embeddings=4096, rope_theta=500000, rms_norm_eps=1e-6, attention_bias=False,
                      tie_word_embeddings=False),
}


def build(vocab_size: int = 97) -> "transformers.Olmo2ForCausalLM":
    config = transformers.Olmo2Config(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-5, tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": 500.0},
    )
    return randomize_(transformers.Olmo2ForCausalLM(config)).eval()
