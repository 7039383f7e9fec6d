"""Gemma (1) interop beyond the generic family checks (tests/parity/test_families.py): variants
(untied head, biases, the released configs' legacy keys), bf16 as transformers computes it, export
chosen by structure, and what the Gemma families refuse, with the message."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

import transformers  # noqa: E402  (a dev dependency: the oracle these tests compare against)

import llm_modules  # noqa: E402
from llm_modules import CausalLM, ConfigError, ModelConfig  # noqa: E402
from llm_modules.interop import HF_FAMILIES  # noqa: E402

from family_models import family_modules  # noqa: E402
from hf_helpers import (  # noqa: E402
    assert_logits_match, assert_round_trip, load_hf, logits_of, randomize_, right_padded,
)

VOCAB = 97
LENGTHS = [9, 5, 7]


def tiny_gemma(**overrides) -> "transformers.GemmaForCausalLM":
    torch.manual_seed(0)
    settings = dict(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=24, max_position_embeddings=64, rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 500.0},
    )
    return randomize_(transformers.GemmaForCausalLM(transformers.GemmaConfig(**{**settings, **overrides}))).eval()


def saved(tmp_path, hf, drop: tuple[str, ...] = (), **config_changes) -> Path:
    """``hf`` saved to ``tmp_path/hf`` with config.json edited: keys dropped, values set."""
    path = tmp_path / "hf"
    hf.save_pretrained(path)
    config = json.loads((path / "config.json").read_text())
    config = {k: v for k, v in config.items() if k not in drop}
    (path / "config.json").write_text(json.dumps({**config, **config_changes}))
    return path


@pytest.mark.parametrize("name", ["gemma", "gemma2", "gemma3_text"])
def test_families_declare_exactly_the_config_fields(name):
    family = HF_FAMILIES.get(name).factory()
    assert set(family.fields) == {f.name for f in dataclasses.fields(ModelConfig)}


def test_untied_head_and_attention_biases_round_trip(tmp_path):
    hf = tiny_gemma(tie_word_embeddings=False, attention_bias=True)
    batch = right_padded(VOCAB, LENGTHS, seed=1)
    ours = assert_round_trip(hf, tmp_path, batch, batch["attention_mask"], transformers.AutoModelForCausalLM)
    assert not ours.config.tie_embeddings and ours.config.bias
    assert ours.config.activation == {"name": "geglu", "approximate": "tanh", "bias": False}  # the MLP has none
    exported = json.loads((tmp_path / "exported" / "config.json").read_text())
    assert (exported["tie_word_embeddings"], exported["attention_bias"], exported["head_dim"]) == (False, True, 24)


def test_released_config_keys_hidden_act_gelu_and_rope_theta(tmp_path):
    """google/gemma-2b's config.json says ``hidden_act: gelu`` and keeps rope_theta at the top level:
    transformers 5 runs the tanh GELU, and so do we; export writes the name it means."""
    hf = tiny_gemma()
    path = saved(tmp_path, hf, drop=("rope_parameters",), hidden_act="gelu", rope_theta=500.0, rope_scaling=None)
    batch = right_padded(VOCAB, LENGTHS, seed=2)
    ours = llm_modules.from_hf(path)
    assert ours.config.activation == {"name": "geglu", "approximate": "tanh"}
    assert ours.config.position == {"name": "rope", "theta": 500.0}
    assert ours.config.embedding_scale == 64**0.5
    assert_logits_match(logits_of(ours, **batch), logits_of(hf, **batch), batch["attention_mask"])
    llm_modules.to_hf(ours, tmp_path / "out")
    assert json.loads((tmp_path / "out" / "config.json").read_text())["hidden_act"] == "gelu_pytorch_tanh"


def test_bf16_embedding_scale_and_norms_as_transformers(tmp_path):
    """In bf16, transformers multiplies the embeddings by sqrt(d) rounded to bf16 and runs the norms in
    fp32, casting back after the (1 + weight) gain; ours does the same, bit for bit. (Further in, the
    logits differ at bf16 precision: our RoPE rotates bf16 queries and keys in fp32, transformers in
    bf16.)"""
    hf = tiny_gemma(hidden_size=48, head_dim=12)  # sqrt(48) is not exact in bf16
    ours = llm_modules.from_hf(saved(tmp_path, hf))
    hf, ours = hf.to(torch.bfloat16), ours.to(torch.bfloat16)
    ids = torch.randint(1, VOCAB, (2, 11), generator=torch.Generator().manual_seed(4))
    stack = ours.model.stack
    entering = {}  # the hidden states entering the first block: the scaled embeddings
    stack.layers[0].register_forward_pre_hook(lambda m, args: entering.__setitem__("ours", args[0]))
    hf.model.layers[0].register_forward_pre_hook(lambda m, args: entering.__setitem__("theirs", args[0]))
    x = torch.randn(2, 11, 48).to(torch.bfloat16) * 3
    with torch.no_grad():
        assert torch.equal(stack.layers[0].residual.norms[0](x), hf.model.layers[0].input_layernorm(x))
        assert torch.equal(stack.final_norm(x), hf.model.norm(x))
        ours(input_ids=ids), hf(input_ids=ids)
    assert entering["ours"].dtype == torch.bfloat16 and torch.equal(entering["ours"], entering["theirs"])


def test_export_picks_the_gemma_families_by_structure(tmp_path):
    """Models built from the shipped presets export as the family they are, and nothing else fits."""
    batch = right_padded(VOCAB, LENGTHS, seed=3)
    for preset, model_type, architecture in (("gemma-tiny", "gemma", "GemmaForCausalLM"),
                                             ("gemma-2-tiny", "gemma2", "Gemma2ForCausalLM"),
                                             ("gemma-3-tiny", "gemma3_text", "Gemma3ForCausalLM")):
        torch.manual_seed(0)
        ours = CausalLM(ModelConfig.from_preset(preset, vocab_size=VOCAB, pad_token_id=0))
        randomize_(ours.model, seed=3)
        fits = [e.name for e in HF_FAMILIES.entries() if not e.factory().mismatches(ours.config, ours)]
        assert fits == [model_type], fits
        llm_modules.to_hf(ours, tmp_path / preset)
        assert json.loads((tmp_path / preset / "config.json").read_text())["model_type"] == model_type
        hf = load_hf(transformers.AutoModelForCausalLM, tmp_path / preset)
        assert type(hf).__name__ == architecture
        assert_logits_match(logits_of(hf, **batch), logits_of(ours, **batch), batch["attention_mask"])


@pytest.mark.parametrize("preset", ["gemma-tiny", "gemma-2-tiny", "gemma-3-tiny"])
def test_interleaved_rope_exports_with_permuted_projections(tmp_path, preset):
    """GPT-J-style RoPE (adjacent pairs) is Gemma's (halves) once each head's q/k rows, their biases and
    Gemma 3's per-head QK-norm gains are permuted, which the weight table declares."""
    torch.manual_seed(0)
    position = {**ModelConfig.from_preset(preset).position, "interleaved": True}
    ours = CausalLM(ModelConfig.from_preset(preset, vocab_size=VOCAB, position=position, bias=True,
                                            activation={"name": "geglu", "approximate": "tanh", "bias": False}))
    randomize_(ours.model, std=0.1, seed=6)
    llm_modules.to_hf(ours, tmp_path)
    batch = right_padded(VOCAB, [20, 13], seed=6)
    hf = load_hf(transformers.AutoModelForCausalLM, tmp_path)
    assert_logits_match(logits_of(hf, **batch), logits_of(ours, **batch), batch["attention_mask"])


def base_gemma(**changes) -> ModelConfig:
    fields = dict(vocab_size=VOCAB, d_model=48, n_layers=2, n_heads=4, head_dim=16, norm="gemma_rmsnorm",
                  activation={"name": "geglu", "approximate": "tanh"}, position="rope", bias=False,
                  embedding_scale=48**0.5, max_seq_len=64)
    return ModelConfig(**{**fields, **changes})


@pytest.mark.parametrize("changes, family, expected", [
    (dict(activation="geglu"), "gemma",
     "activation 'geglu' with approximate='none' (the gemma family has geglu, swiglu, reglu)"),
    (dict(embedding_scale=1.0), "gemma",
     "embedding_scale=1.0 (the gemma family has token embeddings scaled by sqrt(d_model)"),
    (dict(norm="rmsnorm"), "gemma", "norm 'rmsnorm' (the gemma family has 'gemma_rmsnorm')"),
    (dict(activation={"name": "geglu", "approximate": "tanh", "bias": True}), "gemma",
     "activation 'geglu' with bias=True (the gemma family has bias=False)"),
    (dict(sliding_window=8), "gemma", "sliding_window=8 (the gemma family has sliding_window=None"),
    (dict(residual="sandwich", attention_scale=0.3), "gemma2",
     "attention_scale=0.3 (the gemma2 family has attention_scale = query_pre_attn_scalar ** -0.5"),
    (dict(residual="sandwich", d_model=50, embedding_scale=50**0.5), "gemma2",
     "d_model=50 (the gemma2 family has d_model a multiple of n_heads"),
    (dict(residual="sandwich", qk_norm="head"), "gemma2", "qk_norm='head' (the gemma2 family has qk_norm=None"),
])
def test_export_refuses_what_the_family_cannot_express(changes, family, expected):
    with pytest.raises(ConfigError, match=f"cannot export as {family}") as err:
        llm_modules.to_hf(CausalLM(base_gemma(**changes)), "/nonexistent/never-written", family=family)
    assert expected in str(err.value)


@pytest.mark.parametrize("family, changes, expected", [
    ("gemma", dict(use_bidirectional_attention=True), "use_bidirectional_attention is true"),
    ("gemma", dict(rope_parameters={"rope_type": "mrope", "rope_theta": 500.0}),
     "gemma config.json: rope type 'mrope' is not supported"),
    ("gemma", dict(partial_rotary_factor=0.5), "partial_rotary_factor 0.5 is not a Gemma setting"),
    ("gemma2", dict(rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1e6},
                                     "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}),
     "gemma2 config.json: rope_parameters per layer type (full_attention / sliding_attention) are Gemma 3's"),
    ("gemma", dict(hidden_act="gelu", hidden_activation="gelu_python"),
     "hidden_activation 'gelu_python' differs from hidden_act 'gelu'"),
    ("gemma", dict(hidden_act="tanh"), "gemma config.json: activation 'tanh' is not supported"),
    ("gemma2", dict(sliding_window=None), "gemma2 config.json: sliding_window is null"),
    ("gemma2", dict(layer_types=["sliding_attention"]), "gemma2 config.json: layer_types ['sliding_attention'] "
     "must list num_hidden_layers=2 entries"),
    ("gemma2", dict(layer_types=["sliding_attention", "chunked_attention"]), "each 'sliding_attention' or "
     "'full_attention'"),
    ("gemma2", dict(use_bidirectional_attention=True), "gemma2 config.json: use_bidirectional_attention is true"),
])
def test_import_refuses_what_the_family_cannot_represent(tmp_path, family, changes, expected):
    hf = tiny_gemma() if family == "gemma" else transformers.Gemma2ForCausalLM(transformers.Gemma2Config(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=16))
    path = saved(tmp_path, hf, **changes)
    with pytest.raises(ConfigError) as err:
        llm_modules.from_hf(path)
    assert expected in str(err.value)


PUBLISHED = [(preset, hf) for name in ("gemma", "gemma2", "gemma3_text")
             for preset, hf in family_modules()[name].PUBLISHED.items()]


@pytest.mark.parametrize("preset, published", PUBLISHED, ids=[p for p, _ in PUBLISHED])
def test_presets_are_the_published_configs(preset, published):
    """Beyond the parameter counts: the published config.json, read by its family, is the preset
    (windows, soft-caps, RoPE bases, scales, norms ...), and the preset exports to those values."""
    family = HF_FAMILIES.get(published["model_type"]).factory()
    read = family.config_from_hf(dict(published)).replace(bos_token_id=2, eos_token_id=1)
    config = ModelConfig.from_preset(preset)
    assert read.replace(head_dim=read.dim_per_head) == config.replace(head_dim=config.dim_per_head)
    written = family.config_to_hf(config)
    legacy = {"hidden_act": "gelu"}  # google/gemma-2b's name for the tanh GELU, which export spells out
    for key, value in published.items():
        if key in written and legacy.get(key) != value:
            assert written[key] == value, (key, written[key], value)
