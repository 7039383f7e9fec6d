"""rope_from_hf / rope_to_hf: every config.json layout transformers reads, both ways, and the
refusals of what our RoPE cannot represent."""

from __future__ import annotations

import pytest

from llm_modules import ConfigError, ModelConfig
from llm_modules.interop.rope import rope_from_hf, rope_to_hf

BASE = {"max_position_embeddings": 128}


def config_with(position: dict | str, max_seq_len: int = 128) -> ModelConfig:
    return ModelConfig(vocab_size=64, d_model=32, n_heads=2, n_layers=1, max_seq_len=max_seq_len, position=position)


SPECS = [
    {"name": "rope", "theta": 10000.0},
    {"name": "rope", "theta": 500000.0, "scaling": {"type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                    "high_freq_factor": 4.0, "original_max_position_embeddings": 32}},
    {"name": "rope", "theta": 10000.0, "fraction": 0.5, "scaling": {"type": "linear", "factor": 2.0}},
    {"name": "rope", "theta": 10000.0, "scaling": {"type": "dynamic", "factor": 2.0,
                                                   "original_max_position_embeddings": 128}},
    {"name": "rope", "theta": 1e6, "scaling": {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32,
                                               "beta_fast": 8.0, "truncate": False, "attention_factor": 0.9}},
    {"name": "rope", "theta": 10000.0, "scaling": {"type": "longrope", "factor": 4.0, "short_factor": [1.0] * 8,
                                                   "long_factor": [2.0] * 8, "original_max_position_embeddings": 32}},
    {"name": "rope", "theta": 1e6, "local_theta": 10000.0, "scaling": {"type": "linear", "factor": 8.0}},
]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.get("scaling", {}).get("type", "plain") + (
    "-local" if "local_theta" in s else ""))
def test_spec_to_hf_and_back_is_the_same_spec(spec):
    written = rope_to_hf(config_with(spec))
    assert rope_from_hf({**BASE, **written}, "test") == spec
    legacy = {k: v for k, v in written.items() if k != "rope_parameters"}  # what transformers 4 reads
    assert rope_from_hf({**BASE, **legacy}, "test") == spec


def test_transformers_5_layout_is_what_it_writes():
    written = rope_to_hf(config_with(SPECS[1]))
    assert written["rope_parameters"] == {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                          "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                          "original_max_position_embeddings": 32}
    assert written["rope_theta"] == 500000.0 and written["rope_scaling"]["type"] == "llama3"
    assert "rope_scaling" not in rope_to_hf(config_with(SPECS[0]))


def test_phi3_layout_original_length_outside_and_factor_from_max_length():
    hf = {"max_position_embeddings": 131072, "original_max_position_embeddings": 4096, "rope_theta": 10000.0,
          "partial_rotary_factor": 0.75,
          "rope_scaling": {"type": "longrope", "short_factor": [1.0] * 4, "long_factor": [2.0] * 4}}
    assert rope_from_hf(hf, "phi3") == {"name": "rope", "theta": 10000.0, "fraction": 0.75, "scaling": {
        "type": "longrope", "short_factor": [1.0] * 4, "long_factor": [2.0] * 4,
        "original_max_position_embeddings": 4096, "factor": 32.0}}


def test_gemma3_nested_layout_gives_the_local_base():
    hf = {"max_position_embeddings": 128, "rope_parameters": {
        "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
        "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}}}
    assert rope_from_hf(hf, "gemma3") == SPECS[-1]
    legacy = {"max_position_embeddings": 128, "rope_theta": 1e6, "rope_local_base_freq": 10000.0,
              "rope_scaling": {"rope_type": "linear", "factor": 8.0}}
    assert rope_from_hf(legacy, "gemma3") == SPECS[-1]
    hf["rope_parameters"]["sliding_attention"] = {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}
    with pytest.raises(ConfigError, match="gemma3 config.json: rope_parameters.sliding_attention .* scales"):
        rope_from_hf(hf, "gemma3")


def test_nulls_and_ignored_keys_are_what_transformers_makes_of_them():
    hf = {**BASE, "rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 2.0, "beta_fast": None,
                                      "attention_factor": None}}
    assert rope_from_hf(hf, "test")["scaling"] == {"type": "yarn", "factor": 2.0,
                                                   "original_max_position_embeddings": 128}
    # transformers' dynamic ignores an original length and uses max_position_embeddings
    hf = {**BASE, "rope_scaling": {"type": "dynamic", "factor": 2.0, "original_max_position_embeddings": 4}}
    assert rope_from_hf(hf, "test")["scaling"]["original_max_position_embeddings"] == 128


@pytest.mark.parametrize("hf, message", [
    ({"rope_parameters": {"rope_type": "mrope", "rope_theta": 1e4}}, r"rope type 'mrope' is not supported"),
    ({"rope_parameters": {"rope_type": "llama3", "rope_theta": 1e4, "factor": 8.0, "low_freq_factor": 1.0}},
     r"rope type 'llama3' needs high_freq_factor"),
    ({"rope_parameters": {"rope_type": "linear", "rope_theta": 1e4, "factor": 2.0, "beta_fast": 3.0}},
     r"rope parameter 'beta_fast' of rope type 'linear' is not supported"),
])
def test_unrepresentable_rope_is_refused_naming_the_key(hf, message):
    with pytest.raises(ConfigError, match=r"test config.json: " + message):
        rope_from_hf({**BASE, **hf}, "test")


def test_to_hf_refuses_a_position_that_is_not_rope():
    with pytest.raises(ConfigError, match="position 'alibi' is not RoPE"):
        rope_to_hf(config_with("alibi"))
