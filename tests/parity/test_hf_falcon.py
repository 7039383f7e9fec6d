"""Falcon interop beyond the generic family checks: the new decoder architecture (grouped keys/values,
a norm each or one shared), the old multi-head layout, the sequential layout, biases, an untied head;
export by structure, which family an ambiguous model exports as, and what the family refuses."""

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
BASE = dict(vocab_size=VOCAB, hidden_size=48, num_hidden_layers=2, num_attention_heads=6, max_position_embeddings=64)


def tiny_falcon(**overrides) -> "transformers.FalconForCausalLM":
    torch.manual_seed(0)
    return randomize_(transformers.FalconForCausalLM(transformers.FalconConfig(**{**BASE, **overrides}))).eval()


LAYOUTS = {
    "40b-grouped-two-norms": (dict(new_decoder_architecture=True, num_kv_heads=2, bias=True), 2, False),
    "new-one-norm-untied": (dict(new_decoder_architecture=True, num_kv_heads=3, num_ln_in_parallel_attn=1,
                                 tie_word_embeddings=False, ffn_hidden_size=72), 3, True),
    "old-multi-head": (dict(multi_query=False, parallel_attn=True, bias=True), 6, True),
    "sequential-multi-query": (dict(multi_query=True, parallel_attn=False, activation="relu"), 1, None),
    "yarn-scaled": (dict(rope_parameters={"rope_type": "yarn", "factor": 4.0, "rope_theta": 500.0,
                                          "original_max_position_embeddings": 16}), 1, True),
}


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_layouts_round_trip(tmp_path, name):
    overrides, kv, shared = LAYOUTS[name]
    batch = right_padded(VOCAB, LENGTHS)
    ours = assert_round_trip(tiny_falcon(**overrides), tmp_path, batch, batch["attention_mask"],
                             transformers.AutoModelForCausalLM)
    assert ours.config.kv_heads == kv
    residual = ours.config.residual
    assert residual == "pre" if shared is None else residual in ({"name": "parallel", "shared_norm": shared},
                                                                 "parallel" if shared else None)
    exported = json.loads((tmp_path / "exported" / "config.json").read_text())
    assert exported["model_type"] == "falcon"
    for key in ("new_decoder_architecture", "bias"):
        assert exported[key] == overrides.get(key, False)


@pytest.mark.parametrize("name", ["40b-grouped-two-norms", "sequential-multi-query"])
def test_generation_matches_transformers(tmp_path, name):
    hf = tiny_falcon(**LAYOUTS[name][0])
    hf.save_pretrained(tmp_path)
    ids, mask = left_padded_prompts(VOCAB)
    assert_generate_matches(hf, llm_modules.from_hf(tmp_path), ids, mask)


def test_export_picks_falcon_by_structure_and_family_chooses_between_overlaps(tmp_path):
    ours = CausalLM(ModelConfig.from_preset("falcon-tiny", vocab_size=VOCAB, attention="eager"))
    randomize_(ours.model, seed=4)
    llm_modules.to_hf(ours, tmp_path / "falcon")
    assert json.loads((tmp_path / "falcon" / "config.json").read_text())["model_type"] == "falcon"
    batch = right_padded(VOCAB, LENGTHS, seed=4)
    assert_logits_match(logits_of(load_hf(transformers.AutoModelForCausalLM, tmp_path / "falcon"), **batch),
                        logits_of(ours, **batch), batch["attention_mask"])
    # full rotary, biases everywhere, a norm each: both Falcon (new architecture) and GPT-NeoX are exact;
    # the first by name (falcon) is the default, family= picks the other
    both = CausalLM(ModelConfig.from_preset("pythia-tiny", vocab_size=VOCAB, position={"name": "rope"}))
    randomize_(both.model, seed=5)
    for family, written in ((None, "falcon"), ("gpt_neox", "gpt_neox")):
        llm_modules.to_hf(both, tmp_path / written, family=family)
        assert json.loads((tmp_path / written / "config.json").read_text())["model_type"] == written
        assert_logits_match(logits_of(load_hf(transformers.AutoModelForCausalLM, tmp_path / written), **batch),
                            logits_of(both, **batch), batch["attention_mask"])


def test_refusals(tmp_path):
    family = HF_FAMILIES.get("falcon").factory()
    for extra, words in [
        (dict(alibi=True), "alibi=True"),
        (dict(n_head=6), "n_head=6 is a RefinedWeb-era key"),
        (dict(apply_residual_connection_post_layernorm=True), "apply_residual_connection_post_layernorm=True"),
        (dict(new_decoder_architecture=True, parallel_attn=False), "parallel_attn=False"),
        (dict(num_ln_in_parallel_attn=2), "num_ln_in_parallel_attn=2 without new_decoder_architecture"),
        (dict(multi_query=False, num_kv_heads=2), "num_kv_heads=2"),
        (dict(rope_parameters={"rope_type": "mrope", "mrope_section": [1, 1]}), "rope type 'mrope'"),
        (dict(activation="gelu_fast"), "activation 'gelu_fast'"),
    ]:
        with pytest.raises(ConfigError, match=words):
            family.config_from_hf({**BASE, **extra})
    other = ModelConfig.from_preset("falcon-tiny", residual="pre", n_kv_heads=2, bias=True,
                                    activation={"name": "gelu", "bias": False}, position={"name": "rope",
                                                                                       "fraction": 0.5})
    with pytest.raises(ConfigError, match="cannot export as falcon") as err:
        llm_modules.to_hf(CausalLM(other), tmp_path / "never", family="falcon")
    for reason in ("n_kv_heads=2 with residual 'pre'", "bias=True with activation bias=False", "fraction=0.5"):
        assert reason in str(err.value)
