"""BLOOM interop: tiny random transformers models through from_hf / to_hf, logit for logit,
with a head count that is not a power of two (ALiBi slopes)."""

from __future__ import annotations

import json

import pytest
import torch

import transformers  # noqa: E402  (a dev dependency: the oracle these tests compare against)

import llm_modules  # noqa: E402
from llm_modules import CausalLM, ConfigError, ModelConfig  # noqa: E402

from hf_helpers import assert_logits_match, assert_round_trip, load_hf, logits_of, randomize_, right_padded  # noqa: E402

VOCAB = 103
LENGTHS = [10, 3, 7]


def tiny_bloom(**overrides) -> "transformers.BloomForCausalLM":
    torch.manual_seed(0)
    settings = dict(vocab_size=VOCAB, hidden_size=48, n_layer=2, n_head=6, layer_norm_epsilon=1e-5)
    model = transformers.BloomForCausalLM(transformers.BloomConfig(**{**settings, **overrides}))
    return randomize_(model).eval()


def test_six_heads_round_trip(tmp_path):
    batch = right_padded(VOCAB, LENGTHS)
    ours = assert_round_trip(tiny_bloom(), tmp_path, batch, batch["attention_mask"], transformers.AutoModelForCausalLM)
    assert ours.config.n_heads == 6 and ours.config.position == "alibi" and ours.config.embedding_norm
    assert ours.config.max_seq_len == 2048
    assert json.loads((tmp_path / "exported" / "config.json").read_text())["model_type"] == "bloom"


def test_untied_round_trip_keeps_seq_length(tmp_path):
    hf = tiny_bloom(tie_word_embeddings=False, n_head=4, seq_length=256)
    batch = right_padded(VOCAB, LENGTHS, seed=1)
    ours = assert_round_trip(hf, tmp_path, batch, batch["attention_mask"], transformers.AutoModelForCausalLM)
    assert not ours.config.tie_embeddings and ours.config.max_seq_len == 256
    assert json.loads((tmp_path / "exported" / "config.json").read_text())["seq_length"] == 256


def test_export_picks_bloom_by_structure(tmp_path):
    torch.manual_seed(0)
    config = ModelConfig(
        vocab_size=VOCAB, d_model=60, n_layers=2, n_heads=5, norm="layernorm", embedding_norm=True,
        activation={"name": "gelu", "approximate": "tanh"}, position="alibi", bias=True, attention="eager",
    )
    ours = CausalLM(config)
    randomize_(ours.model, seed=3)
    llm_modules.to_hf(ours, tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "bloom"
    batch = right_padded(VOCAB, LENGTHS, seed=3)
    hf = load_hf(transformers.AutoModelForCausalLM, tmp_path)
    assert type(hf).__name__ == "BloomForCausalLM"
    assert_logits_match(logits_of(hf, **batch), logits_of(ours, **batch), batch["attention_mask"])


def test_refuses_residual_after_layernorm(tmp_path):
    tiny_bloom(apply_residual_connection_post_layernorm=True).save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="apply_residual_connection_post_layernorm"):
        llm_modules.from_hf(tmp_path)


def test_bloom_says_why_it_does_not_fit():
    config = ModelConfig(
        vocab_size=VOCAB, d_model=48, n_layers=1, n_heads=6, n_kv_heads=2, norm="layernorm", d_ff=100,
        activation={"name": "gelu", "approximate": "tanh"}, position="alibi",
    )
    with pytest.raises(ConfigError, match="cannot export as bloom") as err:
        llm_modules.to_hf(CausalLM(config), "/nonexistent/never-written", family="bloom")
    for reason in ("embedding_norm=False", "d_ff=100", "n_kv_heads=2"):
        assert reason in str(err.value)
