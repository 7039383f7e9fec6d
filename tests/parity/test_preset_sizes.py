"""Published Llama 3.x and SmolLM2 presets: the preset exports to the published config.json values
(written out here by hand) and has the published parameter count, equal to transformers' own model
for that config (both on the meta device; tests/parity/test_families.py checks the same counts from
tests/family_models/llama3.py)."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from llm_modules import CausalLM, ModelConfig  # noqa: E402
from llm_modules.interop.family import HF_FAMILIES  # noqa: E402
from llm_modules.nn import count_parameters  # noqa: E402

LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8192}

#: the published config.json values (meta-llama/Llama-3.2-1B, meta-llama/Llama-3.1-8B, HuggingFaceTB/SmolLM2-135M)
PUBLISHED = {
    "llama-3.2-1b": (1_235_814_400, dict(
        vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
        num_key_value_heads=8, head_dim=64, max_position_embeddings=131072, rms_norm_eps=1e-5,
        tie_word_embeddings=True, bos_token_id=128000, eos_token_id=128001,
        rope_parameters={**LLAMA3_ROPE, "factor": 32.0})),
    "llama-3.1-8b": (8_030_261_248, dict(
        vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, max_position_embeddings=131072, rms_norm_eps=1e-5, tie_word_embeddings=False,
        bos_token_id=128000, eos_token_id=128001, rope_parameters={**LLAMA3_ROPE, "factor": 8.0})),
    "smollm2-135m": (134_515_008, dict(
        vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
        num_key_value_heads=3, max_position_embeddings=8192, rms_norm_eps=1e-5, tie_word_embeddings=True,
        bos_token_id=0, eos_token_id=0, rope_parameters={"rope_type": "default", "rope_theta": 100000.0})),
}


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_published_preset_has_transformers_parameter_count(name):
    published, hf_values = PUBLISHED[name]
    with torch.device("meta"):
        ours = CausalLM(ModelConfig.from_preset(name))
        theirs = transformers.AutoModelForCausalLM.from_config(transformers.LlamaConfig(**hf_values))
    assert count_parameters(ours.model) == count_parameters(theirs) == published


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_published_preset_exports_the_published_config(name):
    exported = HF_FAMILIES.get("llama").factory().config_to_hf(ModelConfig.from_preset(name))
    for key, value in PUBLISHED[name][1].items():
        assert exported[key] == value, key
