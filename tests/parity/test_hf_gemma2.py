"""Gemma 2 interop beyond the generic family checks: sequences much longer than the sliding window
(logits, and generation with a KV cache far past it), every layer sliding or none, the default
layer pattern of configs without ``layer_types``, soft-caps off, and exports of models whose
layers are all full (transformers still needs a window size), scaled RoPE."""

from __future__ import annotations

import json

import pytest
import torch

import transformers  # noqa: E402  (a dev dependency: the oracle these tests compare against)

import llm_modules  # noqa: E402
from llm_modules import CausalLM, ModelConfig  # noqa: E402
from llm_modules.generation import generate  # noqa: E402

from hf_helpers import (  # noqa: E402
    assert_logits_match, assert_round_trip, load_hf, logits_of, randomize_, right_padded,
)

VOCAB = 97
PAD = 1


def tiny_gemma2(**overrides) -> "transformers.Gemma2ForCausalLM":
    torch.manual_seed(0)
    settings = dict(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, head_dim=24, max_position_embeddings=128, rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 500.0}, query_pre_attn_scalar=20, sliding_window=4,
        attn_logit_softcapping=5.0, final_logit_softcapping=3.0,
    )
    model = transformers.Gemma2ForCausalLM(transformers.Gemma2Config(**{**settings, **overrides}))
    return randomize_(model, std=0.1).eval()


def test_sequences_far_longer_than_the_window(tmp_path):
    """Window 4, rows of 30, 17 and 24 tokens: most keys are outside the sliding layers' window."""
    hf = tiny_gemma2()
    batch = right_padded(VOCAB, [30, 17, 24], seed=1)
    ours = assert_round_trip(hf, tmp_path, batch, batch["attention_mask"], transformers.AutoModelForCausalLM)
    assert ours.config.layer_types == ["sliding", "full", "sliding"] and ours.config.sliding_window == 4
    assert ours.config.attention == "eager" and ours.config.attention_scale == 20**-0.5
    # the window matters here: without it the logits are another model's
    unwindowed = CausalLM(ours.config.replace(layer_types=None, sliding_window=None)).eval()
    unwindowed.model.load_state_dict(ours.model.state_dict())
    diff = (logits_of(unwindowed, **batch) - logits_of(ours, **batch))[batch["attention_mask"].bool()].abs().max()
    assert diff > 1e-2


@pytest.mark.parametrize("beams", [1, 4], ids=["greedy", "beam4"])
def test_generation_with_the_cache_far_past_the_window(tmp_path, beams):
    """Left-padded prompts of 9, 6 and 3 tokens and 20 new ones, window 3: our cache keeps every key
    and masks the old ones, transformers' sliding cache drops them; the ids must be the same."""
    hf = tiny_gemma2(sliding_window=3)
    hf.save_pretrained(tmp_path)
    ours = llm_modules.from_hf(tmp_path)
    ids = torch.randint(3, VOCAB, (3, 9), generator=torch.Generator().manual_seed(2))
    mask = (torch.arange(9).unsqueeze(0) >= 9 - torch.tensor([9, 6, 3]).unsqueeze(1)).long()
    ids = ids.masked_fill(mask == 0, PAD)
    with torch.no_grad():
        expected = hf.generate(ids, attention_mask=mask, max_new_tokens=20, min_new_tokens=20, pad_token_id=PAD,
                               do_sample=False, num_beams=beams)
    got = generate(ours, ids, mask, max_new_tokens=20, pad_token_id=PAD, eos_token_id=[], num_beams=beams)
    assert torch.equal(got, expected), f"ours {got.tolist()}\nhf   {expected.tolist()}"


@pytest.mark.parametrize("layer_types, ours", [
    (["sliding_attention"] * 3, dict(layer_types=["sliding"] * 3, sliding_window=4)),
    (["full_attention"] * 3, dict(layer_types=None, sliding_window=None)),
    (None, dict(layer_types=["sliding", "full", "sliding"], sliding_window=4)),  # transformers' default pattern
])
def test_layer_patterns(tmp_path, layer_types, ours):
    hf = tiny_gemma2()
    hf.config.layer_types = layer_types or hf.config.layer_types
    hf = transformers.Gemma2ForCausalLM(hf.config)  # rebuilt with the pattern
    randomize_(hf, std=0.1)
    hf.eval().save_pretrained(tmp_path / "hf")
    if layer_types is None:  # a config.json from before layer_types
        config = json.loads((tmp_path / "hf" / "config.json").read_text())
        del config["layer_types"]
        (tmp_path / "hf" / "config.json").write_text(json.dumps(config))
    batch = right_padded(VOCAB, [12, 7], seed=3)
    read = llm_modules.from_hf(tmp_path / "hf")
    assert {k: getattr(read.config, k) for k in ours} == ours
    assert_logits_match(logits_of(read, **batch), logits_of(hf, **batch), batch["attention_mask"])
    llm_modules.to_hf(read, tmp_path / "out")
    assert_logits_match(logits_of(load_hf(transformers.AutoModelForCausalLM, tmp_path / "out"), **batch),
                        logits_of(hf, **batch), batch["attention_mask"])


def test_without_soft_caps_and_default_scale(tmp_path):
    hf = tiny_gemma2(attn_logit_softcapping=None, final_logit_softcapping=None, query_pre_attn_scalar=24,
                     tie_word_embeddings=False)
    batch = right_padded(VOCAB, [10, 6], seed=4)
    ours = assert_round_trip(hf, tmp_path, batch, batch["attention_mask"], transformers.AutoModelForCausalLM)
    config = ours.config
    assert (config.attention_softcap, config.logit_softcap, config.attention_scale) == (None, None, None)
    assert config.attention == "sdpa" and not config.tie_embeddings  # nothing to soft-cap: the default backend


def test_export_of_a_model_with_no_sliding_layers(tmp_path):
    """A Gemma 2 built here without a window exports all layers full, with a window size transformers
    needs for its (unused) sliding mask."""
    config = ModelConfig.from_preset("gemma-2-tiny", vocab_size=VOCAB, sliding_window=None, layer_types=None)
    torch.manual_seed(0)
    ours = CausalLM(config)
    randomize_(ours.model, std=0.1, seed=5)
    llm_modules.to_hf(ours, tmp_path)
    written = json.loads((tmp_path / "config.json").read_text())
    assert written["layer_types"] == ["full_attention"] * 2 and written["sliding_window"] == config.max_seq_len
    batch = right_padded(VOCAB, [20, 11], seed=5)
    assert_logits_match(logits_of(load_hf(transformers.AutoModelForCausalLM, tmp_path), **batch),
                        logits_of(ours, **batch), batch["attention_mask"])
    assert llm_modules.from_hf(tmp_path).config.sliding_window is None


def test_scaled_rope_round_trip(tmp_path):
    hf = tiny_gemma2(rope_parameters={"rope_type": "linear", "factor": 4.0, "rope_theta": 500.0})
    batch = right_padded(VOCAB, [16, 9], seed=6)
    ours = assert_round_trip(hf, tmp_path, batch, batch["attention_mask"], transformers.AutoModelForCausalLM)
    assert ours.config.position == {"name": "rope", "theta": 500.0, "scaling": {"type": "linear", "factor": 4.0}}
