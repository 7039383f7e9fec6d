"""OPT interop beyond the generic family checks: LayerNorm after each sublayer (do_layer_norm_before
false), no biases, GELU, an untied head, checkpoints saved without the ``model.`` prefix, export by
structure, and what the family refuses (OPT-350M's project_in/out among them)."""

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
BASE = dict(vocab_size=VOCAB, hidden_size=48, ffn_dim=80, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=32, dropout=0.0, pad_token_id=1, bos_token_id=2, eos_token_id=2)


def tiny_opt(**overrides) -> "transformers.OPTForCausalLM":
    torch.manual_seed(0)
    return randomize_(transformers.OPTForCausalLM(transformers.OPTConfig(**{**BASE, **overrides}))).eval()


@pytest.mark.parametrize("overrides, residual", [
    (dict(do_layer_norm_before=False), "post"),
    (dict(enable_bias=False, activation_function="gelu", tie_word_embeddings=False), "pre"),
], ids=["post-norm", "no-bias-gelu-untied"])
def test_variants_round_trip(tmp_path, overrides, residual):
    batch = right_padded(VOCAB, LENGTHS)
    ours = assert_round_trip(tiny_opt(**overrides), tmp_path, batch, batch["attention_mask"],
                             transformers.AutoModelForCausalLM)
    assert ours.config.residual == residual and ours.config.position == {"name": "learned", "offset": 2}
    exported = json.loads((tmp_path / "exported" / "config.json").read_text())
    assert exported["do_layer_norm_before"] is (residual == "pre")
    assert exported["enable_bias"] is overrides.get("enable_bias", True)


def test_post_norm_generation_matches_transformers(tmp_path):
    hf = tiny_opt(do_layer_norm_before=False)
    hf.save_pretrained(tmp_path)
    ids, mask = left_padded_prompts(VOCAB)
    assert_generate_matches(hf, llm_modules.from_hf(tmp_path), ids, mask)


def test_checkpoint_without_model_prefix_loads(tmp_path):
    """The published OPT checkpoints name their tensors decoder.* (no model. prefix)."""
    from safetensors.torch import load_file, save_file

    hf = tiny_opt()
    hf.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    save_file({k.removeprefix("model."): v for k, v in weights.items()}, tmp_path / "model.safetensors",
              metadata={"format": "pt"})
    batch = right_padded(VOCAB, LENGTHS, seed=2)
    assert_logits_match(logits_of(llm_modules.from_hf(tmp_path), **batch), logits_of(hf, **batch),
                        batch["attention_mask"])


def test_export_picks_opt_by_structure(tmp_path):
    ours = CausalLM(ModelConfig.from_preset("opt-tiny", vocab_size=VOCAB, attention="eager"))
    randomize_(ours.model, seed=4)
    llm_modules.to_hf(ours, tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "opt"
    batch = right_padded(VOCAB, LENGTHS, seed=4)
    assert_logits_match(logits_of(load_hf(transformers.AutoModelForCausalLM, tmp_path), **batch),
                        logits_of(ours, **batch), batch["attention_mask"])


def test_refusals(tmp_path):
    family = HF_FAMILIES.get("opt").factory()
    for extra, words in [
        (dict(word_embed_proj_dim=32), "word_embed_proj_dim=32 differs from hidden_size=48.*project_in/project_out"),
        (dict(layer_norm_elementwise_affine=False), "layer_norm_elementwise_affine=False"),
        (dict(_remove_final_layer_norm=True), "_remove_final_layer_norm=True"),
        (dict(activation_function="gelu_fast"), "activation 'gelu_fast'"),
    ]:
        with pytest.raises(ConfigError, match=words):
            family.config_from_hf({**BASE, **extra})
    other = ModelConfig.from_preset("opt-tiny", position="learned", norm_eps=1e-6, n_kv_heads=2,
                                    activation={"name": "relu", "bias": False})
    with pytest.raises(ConfigError, match="cannot export as opt") as err:
        llm_modules.to_hf(CausalLM(other), tmp_path / "never", family="opt")
    for reason in ("offset=0", "norm_eps=1e-06", "n_kv_heads=2", "bias=True with activation bias=False"):
        assert reason in str(err.value)


def test_opt_350m_layout_is_one_line_exit_2_from_the_cli(tmp_path, capsys):
    """A user converting an OPT-350M-style folder gets the reason on one line, no traceback."""
    from llm_modules.cli import main

    tiny_opt(word_embed_proj_dim=32).save_pretrained(tmp_path / "opt")
    capsys.readouterr()  # transformers' progress bar
    code = main(["convert", "from-hf", str(tmp_path / "opt"), str(tmp_path / "opt.ckpt")])
    out, err = capsys.readouterr()
    assert code == 2 and "Traceback" not in out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "word_embed_proj_dim=32" in lines[0] and "project_in/project_out" in lines[0], err
    assert not (tmp_path / "opt.ckpt").exists()
