"""T5 interop: tiny random transformers T5 models through from_hf / to_hf, logit for logit."""

from __future__ import annotations

import json

import pytest
import torch

import transformers  # noqa: E402  (a dev dependency: the oracle these tests compare against)

import llm_modules  # noqa: E402
from llm_modules import ConfigError, ModelConfig, Seq2SeqLM  # noqa: E402
from llm_modules.interop import HF_FAMILIES  # noqa: E402

from hf_helpers import assert_logits_match, assert_round_trip, logits_of, randomize_, right_padded  # noqa: E402

VOCAB = 97
ENCODER_LENGTHS = [11, 6, 9]
DECODER_LENGTHS = [7, 4, 7]


def tiny_t5(untie_head: bool = False, **overrides) -> "transformers.T5ForConditionalGeneration":
    """d_kv * num_heads != d_model and more decoder than encoder layers; few buckets with a short
    max_distance, so the test sequences reach the log-spaced buckets too."""
    torch.manual_seed(0)
    settings = dict(
        vocab_size=VOCAB, d_model=32, d_kv=12, d_ff=48, num_layers=2, num_decoder_layers=3, num_heads=4,
        relative_attention_num_buckets=8, relative_attention_max_distance=12, dropout_rate=0.0,
    )
    model = transformers.T5ForConditionalGeneration(transformers.T5Config(**{**settings, **overrides}))
    if untie_head:
        # transformers 5 builds every T5 tied; a v1.1 checkpoint has its own lm_head
        model.lm_head.weight = torch.nn.Parameter(torch.empty(VOCAB, 32))
    return randomize_(model).eval()


def seq2seq_batch() -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Padded encoder inputs and padded decoder inputs starting with the pad (decoder start) token;
    the decoder's real positions are where logits are compared."""
    encoder = right_padded(VOCAB, ENCODER_LENGTHS, seed=1)
    decoder = right_padded(VOCAB, DECODER_LENGTHS, seed=2)
    decoder["input_ids"][:, 0] = 0
    batch = {**encoder, "decoder_input_ids": decoder["input_ids"], "decoder_attention_mask": decoder["attention_mask"]}
    return batch, decoder["attention_mask"]


def round_trip(hf, tmp_path) -> Seq2SeqLM:
    batch, real = seq2seq_batch()
    ours = assert_round_trip(hf, tmp_path, batch, real, transformers.AutoModelForSeq2SeqLM)
    assert isinstance(ours, Seq2SeqLM)
    assert (ours.config.n_encoder_layers, ours.config.n_layers, ours.config.dim_per_head) == (2, 3, 12)
    return ours


def exported_config(tmp_path) -> dict:
    return json.loads((tmp_path / "exported" / "config.json").read_text())


def test_v1_1_gated_gelu_untied_head_round_trip(tmp_path):
    ours = round_trip(tiny_t5(untie_head=True, feed_forward_proj="gated-gelu", tie_word_embeddings=False), tmp_path)
    cfg = ours.config
    assert cfg.activation == {"name": "geglu", "approximate": "tanh"}
    assert (cfg.tie_embeddings, cfg.output_scale, cfg.attention_scale) == (False, 1.0, 1.0)
    assert cfg.position == {"name": "t5", "num_buckets": 8, "max_distance": 12}
    exported = exported_config(tmp_path)
    assert (exported["feed_forward_proj"], exported["tie_word_embeddings"]) == ("gated-gelu", False)


def test_original_relu_tied_scaled_round_trip(tmp_path):
    ours = round_trip(tiny_t5(feed_forward_proj="relu"), tmp_path)
    assert ours.config.activation == "relu"
    assert ours.config.tie_embeddings and ours.config.output_scale == pytest.approx(32**-0.5)
    assert ours.model.head.proj.weight is ours.model.embed.tokens.weight
    from safetensors.torch import load_file

    stored = load_file(str(tmp_path / "exported" / "model.safetensors"))
    assert "shared.weight" in stored and "lm_head.weight" not in stored
    assert exported_config(tmp_path)["scale_decoder_outputs"] is True


def test_tied_head_without_scale_round_trip(tmp_path):
    """transformers 5 builds a tie_word_embeddings=false config tied and unscaled; export writes the
    head as an untied copy, which every transformers version reads with the same logits."""
    ours = round_trip(tiny_t5(feed_forward_proj="gated-silu", tie_word_embeddings=False), tmp_path)
    assert ours.config.activation == "swiglu" and ours.config.output_scale == 1.0
    assert exported_config(tmp_path)["tie_word_embeddings"] is False


def test_refuses_what_t5_cannot_express():
    t5 = dict(
        vocab_size=VOCAB, d_model=32, n_layers=1, n_heads=4, norm="rmsnorm", activation="relu",
        position={"name": "t5"}, bias=False, attention_scale=1.0, tie_embeddings=False, output_scale=1.0,
    )
    assert not HF_FAMILIES.get("t5").factory().mismatches(ModelConfig(**t5), Seq2SeqLM)
    bad = Seq2SeqLM(ModelConfig(**{**t5, "norm": "layernorm", "attention_scale": None, "n_kv_heads": 2}))
    with pytest.raises(ConfigError) as err:
        llm_modules.to_hf(bad, "unused", family="t5")
    for reason in ("norm 'layernorm'", "attention_scale=None", "n_kv_heads=2"):
        assert reason in str(err.value)
    untied_scaled = Seq2SeqLM(ModelConfig(**{**t5, "output_scale": 32**-0.5}))
    with pytest.raises(ConfigError, match="(?s)no Hugging Face family.*t5: .*untied head"):
        llm_modules.to_hf(untied_scaled, "unused")


def test_legacy_checkpoint_layout(tmp_path):
    """Pre-transformers-5 layout: no scale_decoder_outputs (the tie flag decides), weights in
    pytorch_model.bin with every tied copy stored, plus the unused cross-attention bucket table
    that the original T5 checkpoints carry."""
    hf = tiny_t5(feed_forward_proj="relu")
    hf.config.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    for key in ("scale_decoder_outputs", "tie_word_embeddings", "dense_act_fn", "is_gated_act"):
        config.pop(key, None)
    (tmp_path / "config.json").write_text(json.dumps(config))
    state = hf.state_dict()
    assert "encoder.embed_tokens.weight" in state and "lm_head.weight" in state
    state["decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight"] = torch.zeros(8, 4)
    torch.save(state, tmp_path / "pytorch_model.bin")
    ours = llm_modules.from_hf(tmp_path)
    assert ours.config.tie_embeddings and ours.config.output_scale == pytest.approx(32**-0.5)
    batch, real = seq2seq_batch()
    assert_logits_match(logits_of(ours, **batch), logits_of(hf, **batch), real)
