"""Qwen3 interop beyond the generic family checks: attention_bias, a sliding-window layer past its
window, head_dim's default of 128, interleaved RoPE exported with the per-head QK-norms permuted
too, and what the family refuses."""

from __future__ import annotations

import json

import pytest
import torch

import transformers  # noqa: E402  (a dev dependency: the oracle these tests compare against)

import llm_modules  # noqa: E402
from llm_modules import CausalLM, ConfigError, ModelConfig  # noqa: E402
from llm_modules.interop.qwen3 import Qwen3Family  # noqa: E402

from family_models import qwen3 as published  # noqa: E402
from hf_helpers import assert_logits_match, assert_round_trip, load_hf, logits_of, randomize_, right_padded  # noqa: E402

VOCAB = 97


def tiny_qwen3(**overrides) -> "transformers.Qwen3ForCausalLM":
    torch.manual_seed(0)
    settings = dict(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=64, rms_norm_eps=1e-6,
        tie_word_embeddings=False, rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    )
    model = transformers.Qwen3ForCausalLM(transformers.Qwen3Config(**{**settings, **overrides}))
    return randomize_(model).eval()


def test_attention_bias_and_a_window_past_its_end(tmp_path):
    """attention_bias puts a bias on q, k, v and o (not the MLP); the second layer attends through
    a window of 4 on rows of 15 tokens."""
    hf = tiny_qwen3(attention_bias=True, use_sliding_window=True, sliding_window=4, max_window_layers=1)
    batch = right_padded(VOCAB, [15, 8, 11], seed=1)
    ours = assert_round_trip(hf, tmp_path, batch, batch["attention_mask"], transformers.AutoModelForCausalLM)
    assert (ours.config.bias, ours.config.qkv_bias, ours.config.out_bias) == (True, None, None)
    assert ours.config.activation == {"name": "swiglu", "bias": False} and ours.config.qk_norm == "head"
    assert (ours.config.sliding_window, ours.config.layer_types) == (4, ["full", "sliding"])
    written = json.loads((tmp_path / "exported" / "config.json").read_text())
    assert (written["model_type"], written["attention_bias"], written["head_dim"]) == ("qwen3", True, 16)
    assert written["layer_types"] == ["full_attention", "sliding_attention"]


def test_head_dim_defaults_to_128():
    """Qwen3Config's head_dim is 128 when config.json has none, whatever hidden_size / heads is."""
    hf = dict(model_type="qwen3", vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, mlp_bias=True)
    config = Qwen3Family().config_from_hf(hf)
    assert (config.head_dim, config.qk_norm, config.bias, config.activation) == (128, "head", False, "swiglu")


def test_interleaved_rope_exports_with_permuted_projections_and_qk_norms(tmp_path):
    """Adjacent rotary pairs become Qwen3's halves once each head's q/k rows are permuted, and the
    per-head norms' gains with them (RMS over a head is the same in any order)."""
    config = ModelConfig.from_preset("qwen3-tiny", vocab_size=VOCAB, bias=True,
                                     activation={"name": "swiglu", "bias": False},
                                     position={"name": "rope", "interleaved": True, "theta": 500.0})
    ours = CausalLM(config)
    randomize_(ours.model, seed=5)
    llm_modules.to_hf(ours, tmp_path)
    hf = load_hf(transformers.AutoModelForCausalLM, tmp_path)
    assert type(hf).__name__ == "Qwen3ForCausalLM"
    batch = right_padded(VOCAB, [9, 5, 7], seed=5)
    assert_logits_match(logits_of(hf, **batch), logits_of(ours, **batch), batch["attention_mask"])


REFUSED = [
    (dict(use_sliding_window=True, sliding_window=8, layer_types=["full_attention", "chunked_attention"]),
     "qwen3 config.json: layer type 'chunked_attention' is not supported"),
    (dict(use_sliding_window=False, layer_types=["sliding_attention", "sliding_attention"]),
     "qwen3 config.json: layer_types lists sliding_attention layers but there is no window"),
    (dict(hidden_act="tanh"), "qwen3 config.json: activation 'tanh' is not supported"),
    (dict(rope_parameters={"rope_type": "made_up", "factor": 2.0, "rope_theta": 1e6}), "'made_up'"),
]


@pytest.mark.parametrize("change, message", REFUSED, ids=["layer-type", "no-window", "activation", "rope"])
def test_refuses_what_it_cannot_represent(change, message):
    hf = dict(model_type="qwen3", vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, head_dim=16)
    with pytest.raises(ConfigError) as err:
        Qwen3Family().config_from_hf({**hf, **change})
    assert message in str(err.value)


def test_export_refuses_other_qk_norms_and_q_k_v_only_biases():
    """QK-norm over the whole projection (OLMo 2's) or none, and Qwen2's q/k/v-only biases, are
    not Qwen3's; without QK-norm the same model is a LLaMA."""
    config = ModelConfig.from_preset("qwen3-tiny", qk_norm="all", qkv_bias=True)
    with pytest.raises(ConfigError, match="cannot export as qwen3") as err:
        llm_modules.to_hf(CausalLM(config), "/nonexistent/never-written", family="qwen3")
    assert "qk_norm='all' (the qwen3 family has qk_norm='head'" in str(err.value)
    assert "qkv_bias=True with bias=False (the qwen3 family has one bias for every projection" in str(err.value)


@pytest.mark.parametrize("preset", list(published.PUBLISHED))
def test_the_published_config_json_reads_as_the_preset(preset):
    assert Qwen3Family().config_from_hf(published.PUBLISHED[preset]) == ModelConfig.from_preset(preset)


def test_yarn_rope_round_trips(tmp_path):
    """Qwen3's long-context recipe (YaRN) with the per-head QK-norm, on rows past the original context."""
    rope = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16, "rope_theta": 10000.0}
    hf = tiny_qwen3(rope_parameters=rope)
    batch = right_padded(VOCAB, [24, 17, 20], seed=7)
    ours = assert_round_trip(hf, tmp_path, batch, batch["attention_mask"], transformers.AutoModelForCausalLM)
    assert ours.config.position["scaling"]["type"] == "yarn"
