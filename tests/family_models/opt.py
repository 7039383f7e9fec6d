"""OPT: learned positions with an offset of 2, pre-norm with a final norm, ReLU MLP, biases, tied head."""

import transformers

from hf_helpers import randomize_

MODEL_TYPE = "opt"

#: OPT-125M as published (config.json)
PUBLISHED = {
    "opt-125m": dict(model_type="opt", vocab_size=50272, hidden_size=768, ffn_dim=3072, num_hidden_layers=12,
                     num_attention_heads=12, max_position_embeddings=2048, do_layer_norm_before=True,
                     word_embed_proj_dim=768, activation_function="relu", enable_bias=True, pad_token_id=1,
                     bos_token_id=2, eos_token_id=2),
}


def build(vocab_size: int = 97) -> "transformers.OPTForCausalLM":
    config = transformers.OPTConfig(
        vocab_size=vocab_size, hidden_size=64, ffn_dim=96, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=128, do_layer_norm_before=True, dropout=0.0, pad_token_id=1, bos_token_id=2,
        eos_token_id=2,
    )
    return randomize_(transformers.OPTForCausalLM(config)).eval()
