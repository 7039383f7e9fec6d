"""Phi-3 specifics beyond the family conformance checks (tests/family_models/phi3.py): the legacy
rope_scaling types transformers reads as longrope, the preset exported and matched past its
original context, and what the family refuses."""

from __future__ import annotations

import json

import pytest
import torch

import transformers  # noqa: E402  (a dev dependency: the oracle these tests compare against)

import llm_modules  # noqa: E402
from llm_modules import CausalLM, ConfigError, ModelConfig  # noqa: E402

from hf_helpers import assert_logits_match, load_hf, logits_of, randomize_, right_padded  # noqa: E402

VOCAB = 97


def test_phi3_tiny_preset_exports_and_matches_past_its_original_context(tmp_path):
    config = ModelConfig.from_preset("phi3-tiny")
    ours = CausalLM(config)
    randomize_(ours.model, seed=6)
    llm_modules.to_hf(ours, tmp_path)
    exported = json.loads((tmp_path / "config.json").read_text())
    assert exported["model_type"] == "phi3" and exported["original_max_position_embeddings"] == 64
    hf = load_hf(transformers.AutoModelForCausalLM, tmp_path)
    assert type(hf).__name__ == "Phi3ForCausalLM"
    for lengths in ([80, 50], [40, 30]):  # long factors, then short ones
        batch = right_padded(config.vocab_size, lengths, seed=6)
        assert_logits_match(logits_of(hf, **batch), logits_of(ours, **batch), batch["attention_mask"])


@pytest.mark.parametrize("legacy_type", ["su", "yarn", "longrope"])
def test_legacy_scaling_types_read_as_longrope(tmp_path, legacy_type):
    """Phi-3-mini-128k's config.json: ``rope_scaling: {type: su|longrope, short_factor, long_factor}``
    and ``original_max_position_embeddings`` at the top level."""
    from family_models.phi3 import build

    hf = build(VOCAB)
    hf.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    params = config.pop("rope_parameters")
    config["rope_theta"] = params.pop("rope_theta")
    config["rope_scaling"] = {"type": legacy_type, "short_factor": params["short_factor"],
                              "long_factor": params["long_factor"]}
    (tmp_path / "config.json").write_text(json.dumps(config))
    ours = llm_modules.from_hf(tmp_path)
    scaling = ours.config.position["scaling"]
    assert (scaling["type"], scaling["original_max_position_embeddings"], scaling["factor"]) == ("longrope", 8, 16.0)
    batch = right_padded(VOCAB, [12, 7], seed=7)
    assert_logits_match(logits_of(ours, **batch), logits_of(hf, **batch), batch["attention_mask"])


def _config(**changes) -> ModelConfig:
    settings = dict(vocab_size=VOCAB, d_model=32, n_layers=1, n_heads=4, norm="rmsnorm", activation="swiglu",
                    bias=False, max_seq_len=64, tie_embeddings=False,
                    position={"name": "rope", "scaling": {"type": "linear", "factor": 2.0}})
    return ModelConfig(**{**settings, **changes})


@pytest.mark.parametrize("changes, message", [
    ({}, "scaling type 'linear' (the phi3 family has longrope scaling or none)"),
    ({"position": {"name": "rope", "scaling": {"type": "longrope", "factor": 2.0, "original_max_position_embeddings": 32,
                                               "short_factor": [1.0] * 4, "long_factor": [2.0] * 4}}},
     "longrope_recompute=False (the phi3 family recomputes the cached keys"),
    ({"position": "rope", "bias": True}, "bias=True (the phi3 family has bias=False"),
    ({"position": {"name": "rope", "interleaved": True}}, "interleaved=True (the phi3 family has interleaved=False)"),
])
def test_phi3_refuses_what_it_cannot_express(changes, message):
    with pytest.raises(ConfigError, match="cannot export as phi3") as err:
        llm_modules.to_hf(CausalLM(_config(**changes)), "/nonexistent/never-written", family="phi3")
    assert message in str(err.value)


def test_longrope_recompute_needs_longrope():
    with pytest.raises(ConfigError, match="longrope_recompute is for longrope scaling"):
        CausalLM(_config(position={"name": "rope", "longrope_recompute": True}))


def test_cached_generation_recomputes_the_keys_once_past_the_original_length():
    """With longrope_recompute the cached path gives the uncached path's tokens past the switch;
    without it, keys cached with the short factors stay (transformers' LLaMA behaviour)."""
    from llm_modules.generation import generate

    scaling = {"type": "longrope", "factor": 4.0, "original_max_position_embeddings": 8,
               "short_factor": [1.0] * 4, "long_factor": [8.0, 16.0, 32.0, 64.0]}
    ids = torch.randint(3, VOCAB, (2, 6), generator=torch.Generator().manual_seed(2))
    results = {}
    for recompute in (True, False):
        torch.manual_seed(0)
        lm = CausalLM(_config(position={"name": "rope", "scaling": scaling, "longrope_recompute": recompute}))
        randomize_(lm.model, std=0.5, seed=8)
        cached = generate(lm, ids, max_new_tokens=10, eos_token_id=[])
        uncached = generate(lm, ids, max_new_tokens=10, eos_token_id=[], use_cache=False)
        results[recompute] = torch.equal(cached, uncached)
    assert results == {True: True, False: False}
