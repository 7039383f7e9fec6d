"""OLMo 2 interop beyond the generic family checks: attention biases (the MLP keeps none), a tied head,
export chosen by structure, and what the family refuses."""

from __future__ import annotations

import json

import pytest
import torch

import transformers  # noqa: E402  (a dev dependency: the oracle these tests compare against)

import llm_modules  # noqa: E402
from llm_modules import CausalLM, ConfigError, ModelConfig  # noqa: E402
from llm_modules.interop import HF_FAMILIES  # noqa: E402

from hf_helpers import (  # noqa: E402
    assert_generate_matches, assert_logits_match, assert_round_trip, left_padded_prompts, load_hf, logits_of,
    randomize_, right_padded,
)

VOCAB = 89
LENGTHS = [9, 4, 6]


def tiny_olmo2(**overrides) -> "transformers.Olmo2ForCausalLM":
    torch.manual_seed(0)
    settings = dict(vocab_size=VOCAB, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64,
                    tie_word_embeddings=False)
    return randomize_(transformers.Olmo2ForCausalLM(transformers.Olmo2Config(**{**settings, **overrides}))).eval()


def test_attention_bias_and_tied_head_round_trip(tmp_path):
    batch = right_padded(VOCAB, LENGTHS)
    hf = tiny_olmo2(attention_bias=True, tie_word_embeddings=True, num_key_value_heads=1)
    ours = assert_round_trip(hf, tmp_path, batch, batch["attention_mask"], transformers.AutoModelForCausalLM)
    assert ours.config.bias is True and ours.config.activation == {"name": "swiglu", "bias": False}
    assert ours.config.tie_embeddings and ours.config.kv_heads == 1
    exported = json.loads((tmp_path / "exported" / "config.json").read_text())
    assert exported["attention_bias"] is True and exported["tie_word_embeddings"] is True


def test_llama3_scaled_rope_round_trip(tmp_path):
    batch = right_padded(VOCAB, LENGTHS, seed=1)
    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8, "rope_theta": 500.0}
    ours = assert_round_trip(tiny_olmo2(rope_parameters=scaling), tmp_path, batch, batch["attention_mask"],
                             transformers.AutoModelForCausalLM)
    assert ours.config.position["scaling"]["type"] == "llama3"


def test_attention_bias_generation_matches_transformers(tmp_path):
    hf = tiny_olmo2(attention_bias=True, num_key_value_heads=2)
    hf.save_pretrained(tmp_path)
    ids, mask = left_padded_prompts(VOCAB)
    assert_generate_matches(hf, llm_modules.from_hf(tmp_path), ids, mask)


def test_export_picks_olmo2_by_structure(tmp_path):
    ours = CausalLM(ModelConfig.from_preset("olmo-2-tiny", vocab_size=VOCAB, attention="eager"))
    randomize_(ours.model, seed=4)
    llm_modules.to_hf(ours, tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "olmo2"
    batch = right_padded(VOCAB, LENGTHS, seed=4)
    assert_logits_match(logits_of(load_hf(transformers.AutoModelForCausalLM, tmp_path), **batch),
                        logits_of(ours, **batch), batch["attention_mask"])


def test_refusals(tmp_path):
    family = HF_FAMILIES.get("olmo2").factory()
    base = dict(vocab_size=VOCAB, hidden_size=48, intermediate_size=80, num_hidden_layers=2, num_attention_heads=4)
    for extra, words in [
        (dict(rope_scaling={"rope_type": "linear", "factor": 2.0, "beta": 1.0}), "rope parameter 'beta'"),
        (dict(hidden_act="tanh"), "activation 'tanh'"),
        (dict(head_dim=16), "head_dim=16"),
    ]:
        with pytest.raises(ConfigError, match=words):
            family.config_from_hf({**base, **extra})
    other = ModelConfig.from_preset("olmo-2-tiny", qk_norm="head", residual="pre",
                                    activation={"name": "swiglu", "bias": True}, head_dim=32)
    with pytest.raises(ConfigError, match="cannot export as olmo2") as err:
        llm_modules.to_hf(CausalLM(other), tmp_path / "never", family="olmo2")
    for reason in ("qk_norm='head'", "residual 'pre'", "bias=True", "head_dim=32"):
        assert reason in str(err.value)
