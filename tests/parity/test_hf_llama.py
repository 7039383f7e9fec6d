"""LLaMA interop: tiny random transformers models through from_hf / to_hf, logit for logit."""

from __future__ import annotations

import json

import pytest
import torch

import transformers  # noqa: E402  (a dev dependency: the oracle these tests compare against)

import llm_modules  # noqa: E402
from llm_modules import CausalLM, ConfigError, ModelConfig  # noqa: E402

from hf_helpers import assert_logits_match, assert_round_trip, load_hf, logits_of, randomize_, right_padded  # noqa: E402

VOCAB = 97
LENGTHS = [9, 5, 7]


def tiny_llama(**overrides) -> "transformers.LlamaForCausalLM":
    torch.manual_seed(0)
    settings = dict(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5, tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": 500.0},
    )
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**{**settings, **overrides}))
    return randomize_(model).eval()


def test_gqa_round_trip(tmp_path):
    batch = right_padded(VOCAB, LENGTHS)
    ours = assert_round_trip(tiny_llama(), tmp_path, batch, batch["attention_mask"], transformers.AutoModelForCausalLM)
    assert (ours.config.n_heads, ours.config.kv_heads) == (4, 2)
    assert ours.config.position == {"name": "rope", "theta": 500.0}
    assert json.loads((tmp_path / "exported" / "config.json").read_text())["model_type"] == "llama"


def test_tied_head_explicit_head_dim_and_biases_round_trip(tmp_path):
    hf = tiny_llama(tie_word_embeddings=True, head_dim=32, attention_bias=True, mlp_bias=False)
    batch = right_padded(VOCAB, LENGTHS, seed=1)
    ours = assert_round_trip(hf, tmp_path, batch, batch["attention_mask"], transformers.AutoModelForCausalLM)
    assert ours.config.bias and ours.config.activation == {"name": "swiglu", "bias": False}
    assert ours.model.head.proj.weight is ours.model.embed.tokens.weight
    from safetensors.torch import load_file

    assert "lm_head.weight" not in load_file(str(tmp_path / "exported" / "model.safetensors"))


def test_legacy_rope_theta_and_pytorch_bin(tmp_path):
    """Pre-transformers-5 layout: rope_theta at top level, weights in pytorch_model.bin."""
    hf = tiny_llama()
    hf.config.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config.pop("rope_parameters")
    config.update(rope_theta=500.0, rope_scaling=None)
    (tmp_path / "config.json").write_text(json.dumps(config))
    torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")

    batch = right_padded(VOCAB, LENGTHS, seed=2)
    ours = llm_modules.from_hf(tmp_path)
    assert_logits_match(logits_of(ours, **batch), logits_of(hf, **batch), batch["attention_mask"])


def test_export_picks_llama_by_structure(tmp_path):
    """A model built from our own config (MQA, default head size) exports as llama and matches."""
    torch.manual_seed(0)
    config = ModelConfig(
        vocab_size=VOCAB, d_model=48, n_layers=2, n_heads=4, n_kv_heads=1, norm="rmsnorm", activation="swiglu",
        position="rope", bias=False, tie_embeddings=True, max_seq_len=64, norm_eps=1e-6,
    )
    ours = CausalLM(config)
    randomize_(ours.model, seed=3)
    llm_modules.to_hf(ours, tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "llama"
    batch = right_padded(VOCAB, LENGTHS, seed=3)
    hf = load_hf(transformers.AutoModelForCausalLM, tmp_path)
    assert type(hf).__name__ == "LlamaForCausalLM"
    assert_logits_match(logits_of(hf, **batch), logits_of(ours, **batch), batch["attention_mask"])


def test_llama_refuses_what_it_cannot_express():
    config = ModelConfig(
        vocab_size=VOCAB, d_model=32, n_layers=1, n_heads=4, norm="rmsnorm", activation="swiglu",
        position={"name": "rope", "fraction": 0.5}, bias=False, sliding_window=8,
    )
    with pytest.raises(ConfigError, match="cannot export as llama") as err:
        llm_modules.to_hf(CausalLM(config), "/nonexistent/never-written", family="llama")
    assert "fraction=0.5" in str(err.value) and "sliding_window" in str(err.value)


@pytest.mark.parametrize("bias", [False, True])
def test_interleaved_rope_exports_with_permuted_projections(tmp_path, bias):
    """GPT-J-style RoPE (adjacent pairs) is LLaMA's (halves) once each head's q/k rows are
    permuted, which the weight table declares; GQA permutes k per key/value head; biases too."""
    config = ModelConfig(
        vocab_size=VOCAB, d_model=48, n_layers=2, n_heads=4, n_kv_heads=2, norm="rmsnorm", activation="swiglu",
        position={"name": "rope", "interleaved": True, "theta": 500.0}, bias=bias, tie_embeddings=False,
        max_seq_len=64,
    )
    ours = CausalLM(config)
    randomize_(ours.model, seed=5)
    llm_modules.to_hf(ours, tmp_path)
    batch = right_padded(VOCAB, LENGTHS, seed=5)
    hf = load_hf(transformers.AutoModelForCausalLM, tmp_path)
    assert type(hf).__name__ == "LlamaForCausalLM"
    assert_logits_match(logits_of(hf, **batch), logits_of(ours, **batch), batch["attention_mask"])
