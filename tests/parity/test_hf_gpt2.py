"""GPT-2 interop: tiny random transformers models through from_hf / to_hf, logit for logit;
legacy checkpoints; and to_hf refusing models that no family can represent."""

from __future__ import annotations

import json

import pytest
import torch

import transformers  # noqa: E402  (a dev dependency: the oracle these tests compare against)

import llm_modules  # noqa: E402
from llm_modules import CausalLM, ConfigError, ModelConfig, PrefixLM  # noqa: E402

from hf_helpers import assert_logits_match, assert_round_trip, load_hf, logits_of, randomize_, right_padded  # noqa: E402

VOCAB = 101
LENGTHS = [8, 4, 6]


def tiny_gpt2(**overrides) -> "transformers.GPT2LMHeadModel":
    torch.manual_seed(0)
    settings = dict(vocab_size=VOCAB, n_positions=32, n_embd=64, n_layer=2, n_head=4, layer_norm_epsilon=1e-5)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**{**settings, **overrides}))
    return randomize_(model).eval()


def gpt2_like(**overrides) -> ModelConfig:
    settings = dict(
        vocab_size=VOCAB, d_model=48, n_layers=2, n_heads=4, norm="layernorm",
        activation={"name": "gelu", "approximate": "tanh"}, position="learned", bias=True, max_seq_len=32,
    )
    return ModelConfig(**{**settings, **overrides})


def test_round_trip(tmp_path):
    batch = right_padded(VOCAB, LENGTHS)
    ours = assert_round_trip(tiny_gpt2(), tmp_path, batch, batch["attention_mask"], transformers.AutoModelForCausalLM)
    assert ours.config.activation == {"name": "gelu", "approximate": "tanh"}
    assert ours.config.tie_embeddings and ours.config.max_seq_len == 32
    exported = json.loads((tmp_path / "exported" / "config.json").read_text())
    assert exported["model_type"] == "gpt2" and exported["activation_function"] == "gelu_new"


def test_untied_custom_inner_unscaled_round_trip(tmp_path):
    hf = tiny_gpt2(tie_word_embeddings=False, n_inner=80, activation_function="relu", scale_attn_weights=False)
    batch = right_padded(VOCAB, LENGTHS, seed=1)
    ours = assert_round_trip(hf, tmp_path, batch, batch["attention_mask"], transformers.AutoModelForCausalLM)
    assert (ours.config.d_ff, ours.config.attention_scale, ours.config.tie_embeddings) == (80, 1.0, False)


def test_legacy_pytorch_bin_without_prefix(tmp_path):
    """Old GPT-2 checkpoints: pytorch_model.bin, names without "transformer.", causal-mask buffers."""
    hf = tiny_gpt2()
    hf.config.save_pretrained(tmp_path)
    state = dict(hf.transformer.state_dict())
    for i in range(hf.config.n_layer):
        state[f"h.{i}.attn.bias"] = torch.tril(torch.ones(32, 32)).view(1, 1, 32, 32)
        state[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    torch.save(state, tmp_path / "pytorch_model.bin")

    batch = right_padded(VOCAB, LENGTHS, seed=2)
    ours = llm_modules.from_hf(tmp_path)
    assert_logits_match(logits_of(ours, **batch), logits_of(hf, **batch), batch["attention_mask"])


def test_stored_head_that_differs_unties_like_transformers(tmp_path):
    """tie_word_embeddings: true, but the checkpoint holds its own lm_head.weight: transformers 5
    keeps the two apart, so from_hf must too."""
    hf = tiny_gpt2()
    hf.config.save_pretrained(tmp_path)
    state = {k: v.clone() for k, v in hf.state_dict().items()}
    state["lm_head.weight"] = torch.randn_like(state["lm_head.weight"]) * 0.2
    torch.save(state, tmp_path / "pytorch_model.bin")

    batch = right_padded(VOCAB, LENGTHS, seed=4)
    expected = logits_of(transformers.AutoModelForCausalLM.from_pretrained(tmp_path), **batch)
    ours = llm_modules.from_hf(tmp_path)
    assert not ours.config.tie_embeddings
    assert_logits_match(logits_of(ours, **batch), expected, batch["attention_mask"])


def test_refuses_checkpoint_that_does_not_match_config(tmp_path):
    tiny_gpt2().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "n_layer": 3}))
    with pytest.raises(ConfigError, match="h.2.* is missing"):
        llm_modules.from_hf(tmp_path)


def test_refuses_per_layer_attention_scaling(tmp_path):
    tiny_gpt2(scale_attn_by_inverse_layer_idx=True).save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="scale_attn_by_inverse_layer_idx"):
        llm_modules.from_hf(tmp_path)


def test_export_picks_gpt2_by_structure(tmp_path):
    torch.manual_seed(0)
    ours = CausalLM(gpt2_like(tie_embeddings=False, d_ff=100))
    randomize_(ours.model, seed=3)
    llm_modules.to_hf(ours, tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "gpt2"
    batch = right_padded(VOCAB, LENGTHS, seed=3)
    hf = load_hf(transformers.AutoModelForCausalLM, tmp_path)
    assert type(hf).__name__ == "GPT2LMHeadModel"
    assert_logits_match(logits_of(hf, **batch), logits_of(ours, **batch), batch["attention_mask"])


@pytest.mark.parametrize("change, reason", [
    ({"residual": "post"}, "residual 'post'"),
    ({"position": "sinusoidal"}, "position 'sinusoidal'"),
    ({"norm": {"name": "layernorm", "bias": False}}, "bias=False"),
    ({"activation": "geglu"}, "activation 'geglu'"),
    ({"output_scale": 0.5}, "output_scale=0.5"),
    ({"head_transform": True}, "head_transform=True"),
])
def test_to_hf_refuses_what_no_family_represents(tmp_path, change, reason):
    """Each change moves a GPT-2-like model out of every family; the error says why, per family,
    and nothing is written."""
    target = tmp_path / "out"
    with pytest.raises(ConfigError, match="no Hugging Face family can represent") as err:
        llm_modules.to_hf(CausalLM(gpt2_like(**change)), target)
    message = str(err.value)
    assert "gpt2:" in message and "llama:" in message and "bloom:" in message
    assert reason in message.split("gpt2:")[1].splitlines()[0]
    assert not (target / "config.json").exists()


def test_to_hf_refuses_other_kinds_and_forced_family(tmp_path):
    with pytest.raises(ConfigError, match="PrefixLM is not a causal decoder"):
        llm_modules.to_hf(PrefixLM(gpt2_like()), tmp_path, family="gpt2")
    with pytest.raises(ConfigError, match="cannot export as llama: .*norm 'layernorm'"):
        llm_modules.to_hf(CausalLM(gpt2_like()), tmp_path, family="llama")
