"""Llama 3.x-style models (LLaMA with scaled RoPE): tiny random transformers models with each RoPE
scaling variant, through from_hf and to_hf logit for logit, and generation against transformers'."""

from __future__ import annotations

import json

import pytest
import torch

import transformers  # noqa: E402  (a dev dependency: the oracle these tests compare against)

import llm_modules  # noqa: E402
from llm_modules import ConfigError  # noqa: E402

from hf_helpers import (  # noqa: E402
    assert_generate_matches, assert_logits_match, assert_round_trip, left_padded_prompts, load_hf, logits_of,
    randomize_, right_padded,
)

VOCAB = 97
ORIGINAL = 16  # the pre-scaling context: batches below run past it


def short_factors(n: int, seed: int) -> list[float]:
    return (1.0 + 2 * torch.rand(n, generator=torch.Generator().manual_seed(seed))).tolist()


ROPES = {
    "llama3": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": ORIGINAL},
    "yarn": {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": ORIGINAL,
             "beta_fast": 16.0},
    "linear": {"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.5},
    "dynamic": {"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 3.0},
    "longrope": {"rope_type": "longrope", "rope_theta": 10000.0, "short_factor": short_factors(8, 0),
                 "long_factor": short_factors(8, 1), "original_max_position_embeddings": ORIGINAL},
}


def tiny_llama3(rope: str, **overrides) -> "transformers.LlamaForCausalLM":
    torch.manual_seed(0)
    settings = dict(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, rms_norm_eps=1e-5, tie_word_embeddings=True,
        # dynamic scales beyond max_position_embeddings; the others beyond their original length
        max_position_embeddings=ORIGINAL if rope == "dynamic" else 4 * ORIGINAL,
        rope_parameters=dict(ROPES[rope]),
    )
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**{**settings, **overrides}))
    return randomize_(model).eval()


@pytest.mark.parametrize("rope", list(ROPES))
@pytest.mark.parametrize("lengths", [[24, 13, 20], [9, 5, 7]], ids=["beyond-original", "within-original"])
def test_scaled_rope_round_trips(tmp_path, rope, lengths):
    batch = right_padded(VOCAB, lengths)
    ours = assert_round_trip(tiny_llama3(rope), tmp_path, batch, batch["attention_mask"],
                             transformers.AutoModelForCausalLM)
    scaling = ours.config.position["scaling"]
    assert scaling["type"] == rope
    exported = json.loads((tmp_path / "exported" / "config.json").read_text())
    assert exported["rope_parameters"]["rope_type"] == rope
    assert exported["rope_scaling"]["type"] == rope  # for transformers 4 readers


@pytest.mark.parametrize("rope", ["llama3", "dynamic", "longrope"])
def test_generation_matches_transformers(tmp_path, rope):
    """Greedy and 4-beam ids on 3 left-padded prompts; 12 new tokens run past the original
    context for dynamic (whose frequencies change mid-generation) and longrope."""
    overrides = {"max_position_embeddings": 12, "rope_parameters": {**ROPES[rope], "original_max_position_embeddings": 12}}
    hf = tiny_llama3(rope, **(overrides if rope != "dynamic" else {"max_position_embeddings": 12}))
    hf.save_pretrained(tmp_path)
    ours = llm_modules.from_hf(tmp_path)
    ids, mask = left_padded_prompts(VOCAB)
    assert_generate_matches(hf, ours, ids, mask)


def test_legacy_rope_scaling_and_top_level_theta(tmp_path):
    """transformers 4 layout: rope_theta at top level, ``rope_scaling`` with ``type``."""
    tiny_llama3("llama3").save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    params = config.pop("rope_parameters")
    config["rope_theta"] = params.pop("rope_theta")
    config["rope_scaling"] = {"type": params.pop("rope_type"), **params}
    (tmp_path / "config.json").write_text(json.dumps(config))
    ours = llm_modules.from_hf(tmp_path)
    assert ours.config.position == {"name": "rope", "theta": 500000.0, "scaling": {"type": "llama3", **params}}


@pytest.mark.parametrize("params, message", [
    ({"rope_type": "proportional", "rope_theta": 1e4, "factor": 2.0}, r"rope type 'proportional' is not supported"),
    ({"rope_type": "yarn", "rope_theta": 1e4, "factor": 2.0, "mrope_section": [2, 2]},
     r"rope parameter 'mrope_section' of rope type 'yarn' is not supported"),
    ({"rope_type": "linear", "rope_theta": 1e4, "factor": 2.0, "partial_rotary_factor": 0.5},
     r"partial_rotary_factor=0.5 is not supported"),
])
def test_unrepresentable_rope_is_refused(tmp_path, params, message):
    tiny_llama3("linear").save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["rope_parameters"] = params
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=r"llama config.json: " + message):
        llm_modules.from_hf(tmp_path)


def test_dynamic_export_needs_its_threshold_at_max_seq_len(tmp_path):
    config = llm_modules.ModelConfig(
        vocab_size=VOCAB, d_model=32, n_layers=1, n_heads=4, norm="rmsnorm", activation="swiglu", bias=False,
        max_seq_len=64, position={"name": "rope", "scaling": {"type": "dynamic", "factor": 2.0,
                                                               "original_max_position_embeddings": 32}},
    )
    with pytest.raises(ConfigError, match=r"original_max_position_embeddings=32 differs from max_seq_len=64.*set "
                                          r"scaling.original_max_position_embeddings: 64 or max_seq_len: 32"):
        llm_modules.to_hf(llm_modules.CausalLM(config), tmp_path / "out", family="llama")


def test_llama3_tiny_preset_exports_and_matches_transformers_beyond_its_original_context(tmp_path):
    config = llm_modules.ModelConfig.from_preset("llama3-tiny")
    ours = llm_modules.CausalLM(config)
    randomize_(ours.model, seed=4)
    llm_modules.to_hf(ours, tmp_path)
    hf = load_hf(transformers.AutoModelForCausalLM, tmp_path)
    assert hf.config.rope_parameters["rope_type"] == "llama3"
    batch = right_padded(config.vocab_size, [80, 50], seed=4)  # the preset's original context is 64
    assert_logits_match(logits_of(hf, **batch), logits_of(ours, **batch), batch["attention_mask"])
