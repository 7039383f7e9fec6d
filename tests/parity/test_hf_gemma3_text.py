"""Gemma 3 (text) interop beyond the generic family checks: the released configs' keys
(``sliding_window_pattern``, top-level ``rope_theta`` / ``rope_local_base_freq`` / ``rope_scaling``),
rows far longer than the window, RoPE scaled on the full layers only, ``attn_logit_softcapping``
(read and unused by transformers), the export layout, and the refusals."""

from __future__ import annotations

import json

import pytest
import torch

import transformers  # noqa: E402  (a dev dependency: the oracle these tests compare against)

import llm_modules  # noqa: E402
from llm_modules import CausalLM, ConfigError, ModelConfig  # noqa: E402

from hf_helpers import assert_logits_match, assert_round_trip, logits_of, randomize_, right_padded  # noqa: E402

VOCAB = 97
BASES = {"full_attention": {"rope_type": "default", "rope_theta": 500.0},
         "sliding_attention": {"rope_type": "default", "rope_theta": 20.0}}


def tiny_gemma3(**overrides) -> "transformers.Gemma3ForCausalLM":
    torch.manual_seed(0)
    settings = dict(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=1, head_dim=24, max_position_embeddings=128, rms_norm_eps=1e-5,
        rope_parameters=BASES, query_pre_attn_scalar=24, sliding_window=3,
    )
    model = transformers.Gemma3ForCausalLM(transformers.Gemma3TextConfig(**{**settings, **overrides}))
    return randomize_(model, std=0.1).eval()


def edited(tmp_path, hf, drop=(), **changes):
    hf.save_pretrained(tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    config = {**{k: v for k, v in config.items() if k not in drop}, **changes}
    (tmp_path / "hf" / "config.json").write_text(json.dumps(config))
    return tmp_path / "hf"


def test_rows_far_longer_than_the_window_and_the_export_layout(tmp_path):
    hf = tiny_gemma3(layer_types=["sliding_attention", "full_attention", "sliding_attention", "sliding_attention"])
    batch = right_padded(VOCAB, [25, 14, 19], seed=1)
    ours = assert_round_trip(hf, tmp_path, batch, batch["attention_mask"], transformers.AutoModelForCausalLM)
    config = ours.config
    assert (config.qk_norm, config.norm, config.residual) == ("head", "gemma_rmsnorm", "sandwich")
    assert config.layer_types == ["sliding", "full", "sliding", "sliding"] and config.attention == "sdpa"
    assert config.attention_scale is None and config.logit_softcap is None
    written = json.loads((tmp_path / "exported" / "config.json").read_text())
    assert written["architectures"] == ["Gemma3ForCausalLM"] and written["attn_logit_softcapping"] is None
    assert written["rope_parameters"] == BASES and config.position == {"name": "rope", "theta": 500.0,
                                                                       "local_theta": 20.0}


def test_released_keys_pattern_and_flat_rope_bases(tmp_path):
    """gemma-3-1b's config.json: no layer_types but sliding_window_pattern, RoPE bases at the top
    level. Pattern 2 here: layers 0 and 2 slide, 1 and 3 are full."""
    hf = tiny_gemma3(layer_types=["sliding_attention", "full_attention"] * 2)
    path = edited(tmp_path, hf, drop=("layer_types", "rope_parameters"), sliding_window_pattern=2,
                  rope_theta=500.0, rope_local_base_freq=20.0, rope_scaling=None)
    assert transformers.AutoConfig.from_pretrained(path).layer_types == hf.config.layer_types
    ours = llm_modules.from_hf(path)
    assert ours.config.layer_types == ["sliding", "full"] * 2
    assert ours.config.position == {"name": "rope", "theta": 500.0, "local_theta": 20.0}
    batch = right_padded(VOCAB, [12, 9], seed=2)
    assert_logits_match(logits_of(ours, **batch), logits_of(hf, **batch), batch["attention_mask"])


def test_attention_softcap_is_unused_as_in_transformers(tmp_path):
    """transformers' Gemma 3 reads attn_logit_softcapping and never applies it; neither do we."""
    hf = tiny_gemma3(attn_logit_softcapping=0.5, final_logit_softcapping=2.0)
    batch = right_padded(VOCAB, [10, 7], seed=3)
    ours = assert_round_trip(hf, tmp_path, batch, batch["attention_mask"], transformers.AutoModelForCausalLM)
    assert ours.config.attention_softcap is None and ours.config.logit_softcap == 2.0
    assert ours.config.layer_types == ["sliding"] * 4  # listed: all slide, with the sliding layers' base


@pytest.mark.parametrize("changes, expected", [
    (dict(sliding_window_pattern=0, drop=("layer_types",)), "sliding_window_pattern 0 must be a positive integer"),
    (dict(use_bidirectional_attention=True), "gemma3_text config.json: use_bidirectional_attention is true"),
    (dict(rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 500.0},
                           "sliding_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 20.0}}),
     "gemma3_text config.json: rope_parameters.sliding_attention"),
])
def test_import_refusals(tmp_path, changes, expected):
    drop = changes.pop("drop", ())
    with pytest.raises(ConfigError) as err:
        llm_modules.from_hf(edited(tmp_path, tiny_gemma3(), drop=drop, **changes))
    assert expected in str(err.value)


@pytest.mark.parametrize("rope", [
    # gemma-3-4b's config.json: linear scaling by 8 on the full layers, flat keys
    dict(drop=("rope_parameters",), rope_theta=500.0, rope_local_base_freq=20.0,
         rope_scaling={"rope_type": "linear", "factor": 8.0}),
    # transformers 5: per layer type
    dict(rope_parameters={"full_attention": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 500.0,
                                             "original_max_position_embeddings": 32},
                          "sliding_attention": {"rope_type": "default", "rope_theta": 20.0}}),
], ids=["legacy-linear", "yarn"])
def test_rope_scaled_on_the_full_layers_only(tmp_path, rope):
    rope = dict(rope)
    drop = rope.pop("drop", ())
    path = edited(tmp_path, tiny_gemma3(layer_types=["sliding_attention", "full_attention"] * 2), drop=drop, **rope)
    hf = transformers.AutoModelForCausalLM.from_pretrained(path).eval()
    ours = llm_modules.from_hf(path)
    position = ours.config.position
    assert position["scaling"]["type"] in ("linear", "yarn") and position["local_theta"] == 20.0
    batch = right_padded(VOCAB, [40, 23], seed=5)  # past the yarn original length
    assert_logits_match(logits_of(ours, **batch), logits_of(hf, **batch), batch["attention_mask"])
    llm_modules.to_hf(ours, tmp_path / "out")
    again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert_logits_match(logits_of(again, **batch), logits_of(hf, **batch), batch["attention_mask"])


@pytest.mark.parametrize("changes, expected", [
    (dict(position={"name": "rope", "theta": 500.0, "scaling": {"type": "linear", "factor": 2.0}}),
     "position 'rope' with scaling and local_theta=None (the gemma3_text family rotates the sliding layers unscaled, "
     "with their own base: set local_theta, e.g. to theta)"),
    (dict(layer_types=None), "position 'rope' with local_theta and layer_types=None (in the gemma3_text family the "
     "sliding layers rotate with local_theta: list layer_types, e.g. all 'sliding')"),
    (dict(qk_norm=None), "qk_norm=None (the gemma3_text family has qk_norm='head'"),
    (dict(attention_softcap=50.0, attention="eager"), "attention_softcap=50.0 (the gemma3_text family has "
     "attention_softcap=None"),
])
def test_export_refusals(changes, expected):
    config = ModelConfig.from_preset("gemma-3-tiny", vocab_size=VOCAB, **changes)
    with pytest.raises(ConfigError, match="cannot export as gemma3_text") as err:
        llm_modules.to_hf(CausalLM(config), "/nonexistent/never-written", family="gemma3_text")
    assert expected in str(err.value)
