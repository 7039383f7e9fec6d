"""Mixtral interop beyond the family conformance checks (tests/family_models): settings round trip,
both expert layouts, the training loss against transformers', export of our own MoE configs, and
what the family refuses."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import transformers

import llm_modules
from llm_modules import CausalLM, ConfigError, ModelConfig

from hf_helpers import assert_logits_match, assert_round_trip, load_hf, logits_of, randomize_, right_padded

VOCAB = 97
LENGTHS = [9, 5, 7]


def tiny_mixtral(**overrides) -> "transformers.MixtralForCausalLM":
    torch.manual_seed(0)
    settings = dict(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5, tie_word_embeddings=False,
        num_local_experts=4, num_experts_per_tok=2, rope_parameters={"rope_type": "default", "rope_theta": 500.0},
    )
    model = transformers.MixtralForCausalLM(transformers.MixtralConfig(**{**settings, **overrides}))
    return randomize_(model).eval()


def test_round_trip(tmp_path):
    batch = right_padded(VOCAB, LENGTHS)
    auto = transformers.AutoModelForCausalLM
    ours = assert_round_trip(tiny_mixtral(), tmp_path, batch, batch["attention_mask"], auto)
    assert ours.config.activation == {
        "name": "moe", "expert": "swiglu", "n_experts": 4, "top_k": 2, "aux_loss_form": "pooled",
        "aux_loss_weight": 0.0, "bias": False, "jitter_noise": 0.0,
    }
    assert ours.config.d_ff == 48 and ours.config.sliding_window is None
    exported = tmp_path / "exported"
    config = json.loads((exported / "config.json").read_text())
    assert config["model_type"] == "mixtral" and config["num_local_experts"] == 4
    # the Hub's per-expert layout, as save_pretrained writes it
    names = set(load_file(str(exported / "model.safetensors")))
    assert names == set(load_file(str(tmp_path / "hf" / "model.safetensors")))
    assert "model.layers.1.block_sparse_moe.experts.3.w2.weight" in names


def test_sliding_window_tied_head_and_training_options_round_trip(tmp_path):
    """A window shorter than the rows (so it masks), a tied head, a GELU-gated expert, and the
    load-balancing settings: router_aux_loss_coef is the pooled loss's weight when
    output_router_logits is on, and the jitter is kept."""
    hf = tiny_mixtral(sliding_window=4, tie_word_embeddings=True, hidden_act="gelu_pytorch_tanh", head_dim=32,
                      output_router_logits=True, router_aux_loss_coef=0.02, router_jitter_noise=0.1)
    batch = right_padded(VOCAB, LENGTHS, seed=1)
    ours = assert_round_trip(hf, tmp_path, batch, batch["attention_mask"], transformers.AutoModelForCausalLM)
    config = ours.config
    assert config.sliding_window == 4 and config.tie_embeddings and config.head_dim == 32
    assert config.activation["expert"] == {"name": "geglu", "approximate": "tanh"}
    assert (config.activation["aux_loss_weight"], config.activation["jitter_noise"]) == (0.02, 0.1)
    exported = json.loads((tmp_path / "exported" / "config.json").read_text())
    assert (exported["output_router_logits"], exported["router_aux_loss_coef"]) == (True, 0.02)
    assert exported["router_jitter_noise"] == 0.1 and exported["sliding_window"] == 4


def test_reads_the_fused_layout_of_transformers_modules(tmp_path):
    """A folder holding transformers 5's in-memory names (mlp.gate, experts.gate_up_proj fused)
    loads too, to the same logits."""
    hf = tiny_mixtral()
    hf.config.save_pretrained(tmp_path)
    save_file({k: v.contiguous() for k, v in hf.state_dict().items()}, str(tmp_path / "model.safetensors"),
              metadata={"format": "pt"})
    assert "model.layers.0.mlp.experts.gate_up_proj" in load_file(str(tmp_path / "model.safetensors"))
    batch = right_padded(VOCAB, LENGTHS, seed=2)
    ours = llm_modules.from_hf(tmp_path)
    assert_logits_match(logits_of(ours, **batch), logits_of(hf, **batch), batch["attention_mask"])


def test_pooled_aux_loss_matches_transformers_training_loss(tmp_path):
    """With output_router_logits, transformers adds router_aux_loss_coef * its balancing loss to the
    LM loss; ours adds the same to the same LM loss."""
    hf = tiny_mixtral(output_router_logits=True, router_aux_loss_coef=0.05)
    hf.save_pretrained(tmp_path)
    ours = llm_modules.from_hf(tmp_path)
    batch = right_padded(VOCAB, LENGTHS, seed=3)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    with torch.no_grad():
        theirs = hf(**batch, labels=labels)
        mine = ours.compute_loss(batch)
    assert mine["lm_loss"].item() == pytest.approx((theirs.loss - 0.05 * theirs.aux_loss).item(), abs=1e-5)
    assert (mine["loss"] - mine["lm_loss"]).item() == pytest.approx(0.05 * theirs.aux_loss.item(), rel=1e-5)


def test_export_picks_mixtral_for_a_moe_model(tmp_path):
    torch.manual_seed(0)
    config = ModelConfig(
        vocab_size=VOCAB, d_model=48, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=40, norm="rmsnorm",
        activation={"name": "moe", "expert": "swiglu", "n_experts": 3, "top_k": 2}, position="rope", bias=False,
        tie_embeddings=True, max_seq_len=64,
    )
    ours = CausalLM(config)
    randomize_(ours.model, seed=3)
    llm_modules.to_hf(ours, tmp_path)
    exported = json.loads((tmp_path / "config.json").read_text())
    assert exported["model_type"] == "mixtral"
    # our default per-layer loss changes no logits: exported with its weight as transformers' coefficient
    assert (exported["router_aux_loss_coef"], exported["output_router_logits"]) == (0.01, True)
    batch = right_padded(VOCAB, LENGTHS, seed=3)
    hf = load_hf(transformers.AutoModelForCausalLM, tmp_path)
    assert type(hf).__name__ == "MixtralForCausalLM"
    assert_logits_match(logits_of(hf, **batch), logits_of(ours, **batch), batch["attention_mask"])


@pytest.mark.parametrize("activation, expected", [
    ({"name": "moe", "normalize_top_k": False}, "normalize_top_k=False"),
    ({"name": "moe", "fp32_combine": False}, "fp32_combine=False"),
    ({"name": "moe", "shared_d_ff": 16}, "shared_d_ff=16"),
    ({"name": "moe", "expert": "gelu"}, "activation.expert 'gelu'"),
    ({"name": "moe", "expert": {"name": "swiglu", "d_ff": 8}}, "with its own d_ff=8"),
    ("swiglu", "activation 'swiglu'"),
])
def test_refuses_what_mixtral_cannot_express(activation, expected):
    config = ModelConfig(vocab_size=VOCAB, d_model=32, n_layers=1, n_heads=4, norm="rmsnorm", activation=activation,
                         position="rope", bias=False)
    with pytest.raises(ConfigError, match="cannot export as mixtral") as err:
        llm_modules.to_hf(CausalLM(config), "/nonexistent/never-written", family="mixtral")
    assert expected in str(err.value)
