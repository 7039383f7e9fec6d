"""Qwen2/2.5 interop beyond the generic family checks: the published configs' ignored window,
windows from max_window_layers (older config.json without layer_types) and on every layer, untied
heads, interleaved RoPE on export, how export tells a Qwen2 from a LLaMA, and the refusals."""

from __future__ import annotations

import json

import pytest
import torch

import transformers  # noqa: E402  (a dev dependency: the oracle these tests compare against)

import llm_modules  # noqa: E402
from llm_modules import CausalLM, ConfigError, ModelConfig  # noqa: E402
from llm_modules.interop.qwen2 import Qwen2Family  # noqa: E402

from family_models import qwen2 as published  # noqa: E402
from hf_helpers import assert_logits_match, assert_round_trip, load_hf, logits_of, randomize_, right_padded  # noqa: E402

VOCAB = 97


def tiny_qwen2(**overrides) -> "transformers.Qwen2ForCausalLM":
    torch.manual_seed(0)
    settings = dict(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-6, tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    )
    model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**{**settings, **overrides}))
    return randomize_(model).eval()


def test_published_style_window_is_off_and_the_head_untied(tmp_path):
    """Qwen2.5's config.json names a window and max_window_layers but use_sliding_window false:
    no layer is windowed (rows longer than that window would show it)."""
    hf = tiny_qwen2(use_sliding_window=False, sliding_window=4, max_window_layers=1)
    batch = right_padded(VOCAB, [12, 7, 10], seed=1)
    ours = assert_round_trip(hf, tmp_path, batch, batch["attention_mask"], transformers.AutoModelForCausalLM)
    assert (ours.config.sliding_window, ours.config.layer_types, ours.config.tie_embeddings) == (None, None, False)
    assert (ours.config.bias, ours.config.qkv_bias) == (False, True)
    written = json.loads((tmp_path / "exported" / "config.json").read_text())
    assert (written["model_type"], written["use_sliding_window"]) == ("qwen2", False)
    assert "attention_bias" not in written and "mlp_bias" not in written


@pytest.mark.parametrize("first, expected", [(2, ["full", "full", "sliding"]), (0, None)], ids=["last", "every"])
def test_windows_from_max_window_layers_past_the_window(tmp_path, first, expected):
    """An older config.json without layer_types: layers from max_window_layers on are windowed
    (all of them: our layer_types null); rows of 16 tokens run past the window of 4."""
    hf = tiny_qwen2(use_sliding_window=True, sliding_window=4, max_window_layers=first)
    hf.save_pretrained(tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    del config["layer_types"]
    (tmp_path / "hf" / "config.json").write_text(json.dumps(config))
    ours = llm_modules.from_hf(tmp_path / "hf")
    assert (ours.config.sliding_window, ours.config.layer_types) == (4, expected)
    batch = right_padded(VOCAB, [16, 9, 13], seed=2)
    expected_logits = logits_of(hf, **batch)
    assert_logits_match(logits_of(ours, **batch), expected_logits, batch["attention_mask"])
    llm_modules.to_hf(ours, tmp_path / "out")
    written = json.loads((tmp_path / "out" / "config.json").read_text())
    assert (written["model_type"], written["use_sliding_window"], written["max_window_layers"]) == ("qwen2", True, first)
    exported = load_hf(transformers.AutoModelForCausalLM, tmp_path / "out")
    assert_logits_match(logits_of(exported, **batch), expected_logits, batch["attention_mask"])


def test_export_tells_qwen2_from_llama(tmp_path):
    """Biases on q/k/v only make a Qwen2 (LLaMA has one bias for every projection); the same
    model without biases is a LLaMA. Either spelling of the biases (qkv_bias: true, or bias: true
    with out_bias and the feed-forward's bias false) exports as qwen2."""
    spellings = [dict(), dict(bias=True, qkv_bias=None, out_bias=False, activation={"name": "swiglu", "bias": False})]
    batch = right_padded(VOCAB, [9, 6], seed=3)
    for i, spelling in enumerate(spellings):
        torch.manual_seed(i)
        ours = CausalLM(ModelConfig.from_preset("qwen2.5-tiny", vocab_size=VOCAB, **spelling))
        randomize_(ours.model, seed=i)
        llm_modules.to_hf(ours, tmp_path / str(i))
        hf = load_hf(transformers.AutoModelForCausalLM, tmp_path / str(i))
        assert type(hf).__name__ == "Qwen2ForCausalLM"
        assert_logits_match(logits_of(hf, **batch), logits_of(ours, **batch), batch["attention_mask"])
    plain = ModelConfig.from_preset("qwen2.5-tiny", qkv_bias=None)
    llm_modules.to_hf(CausalLM(plain), tmp_path / "plain")
    assert json.loads((tmp_path / "plain" / "config.json").read_text())["model_type"] == "llama"


def test_interleaved_rope_exports_with_permuted_projections_and_biases(tmp_path):
    config = ModelConfig.from_preset("qwen2.5-tiny", vocab_size=VOCAB, tie_embeddings=False,
                                     position={"name": "rope", "interleaved": True, "theta": 500.0})
    ours = CausalLM(config)
    randomize_(ours.model, seed=5)
    llm_modules.to_hf(ours, tmp_path)
    batch = right_padded(VOCAB, [9, 5, 7], seed=5)
    hf = load_hf(transformers.AutoModelForCausalLM, tmp_path)
    assert_logits_match(logits_of(hf, **batch), logits_of(ours, **batch), batch["attention_mask"])


BASE = dict(model_type="qwen2", vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2)
REFUSED = [
    (dict(use_sliding_window=False, layer_types=["full_attention", "sliding_attention"]),
     "qwen2 config.json: layer_types lists sliding_attention layers but there is no window (use_sliding_window=False"),
    (dict(use_sliding_window=True, sliding_window=8, layer_types=["full_attention", "chunked_attention"]),
     "qwen2 config.json: layer type 'chunked_attention' is not supported"),
    (dict(use_sliding_window=True, sliding_window=8, layer_types=["full_attention"]),
     "qwen2 config.json: layer_types must list one entry per layer (num_hidden_layers=2)"),
    (dict(use_sliding_window=True, sliding_window=-1), "qwen2 config.json: sliding_window=-1 is not a window"),
    (dict(hidden_act="tanh"), "qwen2 config.json: activation 'tanh' is not supported"),
    (dict(rope_scaling={"type": "made_up", "factor": 4.0}), "'made_up'"),
]


@pytest.mark.parametrize("change, message", REFUSED, ids=["no-window", "layer-type", "layer-count", "window",
                                                          "activation", "rope"])
def test_refuses_what_it_cannot_represent(change, message):
    with pytest.raises(ConfigError) as err:
        Qwen2Family().config_from_hf({**BASE, **change})
    assert message in str(err.value)


def test_config_json_defaults_are_qwen2_s():
    """Missing keys take Qwen2Config's defaults (32 key/value heads, no window); attention_bias and
    mlp_bias are not Qwen2's keys and change nothing."""
    hf = {key: value for key, value in BASE.items() if key != "num_key_value_heads"}
    config = Qwen2Family().config_from_hf({**hf, "num_attention_heads": 32, "attention_bias": True, "mlp_bias": True})
    assert (config.kv_heads, config.sliding_window, config.max_seq_len) == (32, None, 32768)
    assert (config.bias, config.qkv_bias, config.activation) == (False, True, "swiglu")


def test_export_refuses_other_biases():
    config = ModelConfig.from_preset("qwen2.5-tiny", out_bias=True, activation={"name": "swiglu", "bias": True})
    with pytest.raises(ConfigError, match="cannot export as qwen2") as err:
        llm_modules.to_hf(CausalLM(config), "/nonexistent/never-written", family="qwen2")
    assert "output projection with a bias (out_bias=True, bias=False)" in str(err.value)
    assert "activation 'swiglu' with bias=True (the qwen2 family has bias=False)" in str(err.value)


@pytest.mark.parametrize("preset", list(published.PUBLISHED))
def test_the_published_config_json_reads_as_the_preset(preset):
    assert Qwen2Family().config_from_hf(published.PUBLISHED[preset]) == ModelConfig.from_preset(preset)


@pytest.mark.parametrize("rope", [
    {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16, "rope_theta": 10000.0},
    {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0},
], ids=["yarn", "linear"])
def test_scaled_rope_round_trips(tmp_path, rope):
    """Qwen2.5's long-context recipe (YaRN, factor 4) and linear scaling read and export exactly,
    on rows longer than the original context."""
    hf = tiny_qwen2(rope_parameters=rope)
    batch = right_padded(VOCAB, [24, 17, 20], seed=6)
    ours = assert_round_trip(hf, tmp_path, batch, batch["attention_mask"], transformers.AutoModelForCausalLM)
    assert ours.config.position["scaling"]["type"] == rope["rope_type"]
    assert json.loads((tmp_path / "exported" / "config.json").read_text())["rope_parameters"] == rope
