"""GPT-NeoX interop beyond the generic family checks: the sequential layout, no attention bias, a tied
head, legacy config keys (rotary_pct, rotary_emb_base), export chosen by structure, and what the
family refuses."""

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


def tiny_neox(**overrides) -> "transformers.GPTNeoXForCausalLM":
    torch.manual_seed(0)
    settings = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=80, num_hidden_layers=2,
                    num_attention_heads=4, max_position_embeddings=64, tie_word_embeddings=False)
    return randomize_(transformers.GPTNeoXForCausalLM(transformers.GPTNeoXConfig(**{**settings, **overrides}))).eval()


@pytest.mark.parametrize("overrides, residual, bias", [
    (dict(use_parallel_residual=False, rotary_pct=0.5, rotary_emb_base=300), "pre", True),
    (dict(attention_bias=False, hidden_act="gelu_new", tie_word_embeddings=True), "parallel", False),
    (dict(rope_parameters={"rope_type": "linear", "factor": 4.0, "rope_theta": 1000.0, "partial_rotary_factor": 0.5}),
     "parallel", True),
], ids=["sequential-legacy-keys", "no-attention-bias-tied", "linear-scaling-partial"])
def test_variants_round_trip(tmp_path, overrides, residual, bias):
    batch = right_padded(VOCAB, LENGTHS)
    ours = assert_round_trip(tiny_neox(**overrides), tmp_path, batch, batch["attention_mask"],
                             transformers.AutoModelForCausalLM)
    assert ours.config.bias is bias
    assert (ours.config.residual if isinstance(ours.config.residual, str) else ours.config.residual["name"]) == residual
    exported = json.loads((tmp_path / "exported" / "config.json").read_text())
    assert exported["use_parallel_residual"] is (residual == "parallel")
    assert exported["tie_word_embeddings"] is overrides.get("tie_word_embeddings", False)


def test_sequential_generation_matches_transformers(tmp_path):
    hf = tiny_neox(use_parallel_residual=False)
    hf.save_pretrained(tmp_path)
    ids, mask = left_padded_prompts(VOCAB)
    assert_generate_matches(hf, llm_modules.from_hf(tmp_path), ids, mask)


def test_legacy_rotary_keys_are_read():
    config = HF_FAMILIES.get("gpt_neox").factory().config_from_hf(
        dict(vocab_size=VOCAB, hidden_size=48, intermediate_size=80, num_hidden_layers=2, num_attention_heads=4,
             rotary_pct=0.5, rotary_emb_base=300))
    assert config.position == {"name": "rope", "theta": 300.0, "fraction": 0.5}


def test_head_stored_as_lm_head_is_read(tmp_path):
    """transformers 5 names the head lm_head inside the model; a folder saved that way loads too."""
    from safetensors.torch import load_file, save_file

    hf = tiny_neox()
    hf.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    weights["lm_head.weight"] = weights.pop("embed_out.weight")
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    batch = right_padded(VOCAB, LENGTHS, seed=2)
    assert_logits_match(logits_of(llm_modules.from_hf(tmp_path), **batch), logits_of(hf, **batch),
                        batch["attention_mask"])


def test_export_picks_gpt_neox_by_structure(tmp_path):
    config = ModelConfig.from_preset("pythia-tiny", vocab_size=VOCAB, attention="eager")
    ours = CausalLM(config)
    randomize_(ours.model, seed=4)
    llm_modules.to_hf(ours, tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "gpt_neox"
    batch = right_padded(VOCAB, LENGTHS, seed=4)
    assert_logits_match(logits_of(load_hf(transformers.AutoModelForCausalLM, tmp_path), **batch),
                        logits_of(ours, **batch), batch["attention_mask"])


def test_refusals(tmp_path):
    family = HF_FAMILIES.get("gpt_neox").factory()
    base = dict(vocab_size=VOCAB, hidden_size=48, intermediate_size=80, num_hidden_layers=2, num_attention_heads=4)
    for extra, words in [
        (dict(rope_parameters={"rope_type": "linear", "factor": 2.0, "beta": 1.0}), "rope parameter 'beta'"),
        (dict(hidden_act="quick_gelu"), "activation 'quick_gelu'"),
        (dict(num_key_value_heads=2), "num_key_value_heads=2"),
    ]:
        with pytest.raises(ConfigError, match=words):
            family.config_from_hf({**base, **extra})
    shared = ModelConfig.from_preset("pythia-tiny", residual="parallel", n_kv_heads=2,
                                     activation={"name": "gelu", "bias": False})
    with pytest.raises(ConfigError, match="cannot export as gpt_neox") as err:
        llm_modules.to_hf(CausalLM(shared), tmp_path / "never", family="gpt_neox")
    for reason in ("shared_norm=True", "n_kv_heads=2", "bias=False"):
        assert reason in str(err.value)
