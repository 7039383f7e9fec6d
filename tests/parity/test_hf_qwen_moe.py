"""Qwen2-MoE and Qwen3-MoE interop beyond the family conformance checks (tests/family_models): sliding
windows per layer and on all layers, the fused expert layout, interleaved RoPE with QK-norm on
export, and what each family refuses."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

import transformers

import llm_modules
from llm_modules import CausalLM, ConfigError, ModelConfig

from hf_helpers import assert_logits_match, assert_round_trip, load_hf, logits_of, randomize_, right_padded

VOCAB = 97
LENGTHS = [9, 5, 7]
SIZES = dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             moe_intermediate_size=32, num_experts=4, num_experts_per_tok=2, max_position_embeddings=64,
             tie_word_embeddings=False, rope_parameters={"rope_type": "default", "rope_theta": 500.0})


def qwen2_moe(**overrides) -> "transformers.Qwen2MoeForCausalLM":
    torch.manual_seed(0)
    config = transformers.Qwen2MoeConfig(**{**SIZES, "shared_expert_intermediate_size": 40, **overrides})
    return randomize_(transformers.Qwen2MoeForCausalLM(config)).eval()


def qwen3_moe(**overrides) -> "transformers.Qwen3MoeForCausalLM":
    torch.manual_seed(0)
    return randomize_(transformers.Qwen3MoeForCausalLM(transformers.Qwen3MoeConfig(**{**SIZES, **overrides}))).eval()


def test_qwen2_moe_sliding_layers_and_renormalized_routing_round_trip(tmp_path):
    """transformers' default pattern (even layers below max_window_layers slide) becomes our
    layer_types; the window is shorter than the rows, so it masks; no q/k/v bias this time."""
    hf = qwen2_moe(use_sliding_window=True, sliding_window=4, max_window_layers=2, qkv_bias=False, norm_topk_prob=True)
    assert hf.config.layer_types == ["sliding_attention", "full_attention"]
    batch = right_padded(VOCAB, LENGTHS, seed=1)
    ours = assert_round_trip(hf, tmp_path, batch, batch["attention_mask"], transformers.AutoModelForCausalLM)
    config = ours.config
    assert (config.sliding_window, config.layer_types) == (4, ["sliding", "full"])
    assert config.qkv_bias is None and not config.bias
    assert config.activation["normalize_top_k"] is True and config.activation["shared_d_ff"] == 40
    exported = json.loads((tmp_path / "exported" / "config.json").read_text())
    assert exported["use_sliding_window"] and exported["layer_types"] == ["sliding_attention", "full_attention"]
    unwindowed = right_padded(VOCAB, LENGTHS, seed=1)
    assert not torch.allclose(logits_of(qwen2_moe(qkv_bias=False, norm_topk_prob=True), **unwindowed),
                              logits_of(hf, **unwindowed), atol=1e-3)  # the window did change the logits


def test_qwen2_moe_reads_the_fused_layout(tmp_path):
    hf = qwen2_moe()
    hf.config.save_pretrained(tmp_path)
    save_file({k: v.contiguous() for k, v in hf.state_dict().items()}, str(tmp_path / "model.safetensors"),
              metadata={"format": "pt"})
    batch = right_padded(VOCAB, LENGTHS, seed=2)
    assert_logits_match(logits_of(llm_modules.from_hf(tmp_path), **batch), logits_of(hf, **batch),
                        batch["attention_mask"])


def test_qwen3_moe_window_on_every_layer_and_attention_bias_round_trip(tmp_path):
    hf = qwen3_moe(use_sliding_window=True, sliding_window=4, attention_bias=True, head_dim=24)
    batch = right_padded(VOCAB, LENGTHS, seed=3)
    ours = assert_round_trip(hf, tmp_path, batch, batch["attention_mask"], transformers.AutoModelForCausalLM)
    config = ours.config
    assert (config.sliding_window, config.layer_types, config.qk_norm, config.bias) == (4, None, "head", True)
    assert config.head_dim == 24 and "shared_d_ff" not in config.activation


def test_sliding_window_is_ignored_without_use_sliding_window(tmp_path):
    """transformers ignores sliding_window when use_sliding_window is false, and so does import."""
    for build, folder in ((qwen2_moe, "q2"), (qwen3_moe, "q3")):
        build(sliding_window=4, use_sliding_window=False).save_pretrained(tmp_path / folder)
        assert json.loads((tmp_path / folder / "config.json").read_text()).get("use_sliding_window") is False
        assert llm_modules.from_hf(tmp_path / folder).config.sliding_window is None


def test_qwen3_moe_exports_interleaved_rope_with_its_qk_norm_gains_permuted(tmp_path):
    """Our adjacent rotary pairs become transformers' halves: q/k rows are reordered per head, and
    the per-head QK-norm gains with them."""
    config = ModelConfig(
        vocab_size=VOCAB, d_model=48, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=24, norm="rmsnorm", qk_norm="head",
        activation={"name": "moe", "n_experts": 3, "top_k": 2, "fp32_combine": False, "bias": False},
        position={"name": "rope", "interleaved": True, "theta": 500.0}, bias=False, tie_embeddings=False,
        max_seq_len=64,
    )
    ours = CausalLM(config)
    randomize_(ours.model, seed=5)
    llm_modules.to_hf(ours, tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "qwen3_moe"
    batch = right_padded(VOCAB, LENGTHS, seed=5)
    hf = load_hf(transformers.AutoModelForCausalLM, tmp_path)
    assert_logits_match(logits_of(hf, **batch), logits_of(ours, **batch), batch["attention_mask"])


@pytest.mark.parametrize("build, overrides, message", [
    (qwen2_moe, {"mlp_only_layers": [1]}, r"layers \[1\] are dense MLPs"),
    (qwen3_moe, {"decoder_sparse_step": 2}, r"layers \[0\] are dense MLPs"),
    (qwen2_moe, {"layer_types": ["sliding_attention", "full_attention"], "use_sliding_window": False},
     "use_sliding_window is false"),
])
def test_import_refuses(tmp_path, build, overrides, message):
    build(**overrides).save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match=message):
        llm_modules.from_hf(tmp_path)


def _config(**fields) -> ModelConfig:
    moe = {"name": "moe", "n_experts": 3, "fp32_combine": False, "bias": False}
    settings = dict(vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=4, norm="rmsnorm", activation=moe,
                    position="rope", bias=False)
    return ModelConfig(**{**settings, **fields})


@pytest.mark.parametrize("family, fields, expected", [
    ("qwen2_moe", {}, "without a shared expert"),
    ("qwen2_moe", {"qk_norm": "head"}, "qk_norm='head'"),
    ("qwen2_moe", {"qkv_bias": True, "out_bias": True}, "out_bias=True"),
    ("qwen3_moe", {}, "qk_norm=None"),
    ("qwen3_moe", {"qk_norm": "head", "activation": {"name": "moe", "fp32_combine": False, "bias": False,
                                                     "shared_d_ff": 8}}, "shared_d_ff=8"),
    ("qwen3_moe", {"qk_norm": "head", "sliding_window": 4, "layer_types": ["sliding", "full"]},
     "the same attention on every layer"),
    ("qwen3_moe", {"qk_norm": "head", "activation": {"name": "moe", "bias": False}}, "fp32_combine=True"),
])
def test_export_refuses(family, fields, expected):
    with pytest.raises(ConfigError, match=f"cannot export as {family}") as err:
        llm_modules.to_hf(CausalLM(_config(**fields)), "/nonexistent/never-written", family=family)
    assert expected in str(err.value)
