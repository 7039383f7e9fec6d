"""BERT interop: tiny random transformers BertForMaskedLM models through from_hf / to_hf, logit for logit."""

from __future__ import annotations

import json

import pytest
import torch

import transformers  # noqa: E402  (a dev dependency: the oracle these tests compare against)

import llm_modules  # noqa: E402
from llm_modules import ConfigError, MaskedLM, ModelConfig  # noqa: E402

from hf_helpers import assert_logits_match, assert_round_trip, load_hf, logits_of, randomize_, right_padded  # noqa: E402

VOCAB = 97
LENGTHS = [10, 4, 7]


def tiny_bert(untie_head: bool = False, **overrides) -> "transformers.BertForMaskedLM":
    torch.manual_seed(0)
    settings = dict(
        vocab_size=VOCAB, hidden_size=48, num_hidden_layers=2, num_attention_heads=4, intermediate_size=80,
        max_position_embeddings=32, type_vocab_size=3, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        tie_word_embeddings=not untie_head,
    )
    return randomize_(transformers.BertForMaskedLM(transformers.BertConfig(**{**settings, **overrides}))).eval()


def bert_batch(seed: int = 1) -> dict[str, torch.Tensor]:
    """Right-padded (BERT's convention) with two segments per row."""
    batch = right_padded(VOCAB, LENGTHS, seed=seed)
    halves = (torch.arange(max(LENGTHS)).unsqueeze(0) >= torch.tensor(LENGTHS).unsqueeze(1) // 2).long()
    batch["token_type_ids"] = halves * batch["attention_mask"]
    return batch


def test_tied_head_round_trip(tmp_path):
    batch = bert_batch()
    ours = assert_round_trip(tiny_bert(), tmp_path, batch, batch["attention_mask"], transformers.AutoModelForMaskedLM)
    cfg = ours.config
    assert isinstance(ours, MaskedLM)
    assert (cfg.residual, cfg.norm, cfg.norm_eps, cfg.activation, cfg.position) == ("post", "layernorm", 1e-12, "gelu", "learned")
    assert cfg.head_transform and cfg.embedding_norm and cfg.lm_head_bias and cfg.type_vocab_size == 3
    assert ours.model.head.proj.weight is ours.model.embed.tokens.weight


def test_untied_head_round_trip(tmp_path):
    batch = bert_batch(seed=2)
    ours = assert_round_trip(
        tiny_bert(untie_head=True), tmp_path, batch, batch["attention_mask"], transformers.AutoModelForMaskedLM
    )
    assert not ours.config.tie_embeddings
    assert json.loads((tmp_path / "exported" / "config.json").read_text())["tie_word_embeddings"] is False


def test_model_without_token_types_or_head_bias_exports_exactly(tmp_path):
    """HF's BERT always has token types and a head bias; zeros stand in for missing ones."""
    cfg = ModelConfig(
        vocab_size=VOCAB, d_model=32, n_layers=1, n_heads=2, d_ff=64, norm_eps=1e-12, residual="post",
        activation="gelu", position="learned", max_seq_len=16, embedding_norm=True, head_transform=True,
    )
    ours = MaskedLM(cfg).eval()
    randomize_(ours.model)
    batch = right_padded(VOCAB, [9, 5])
    llm_modules.to_hf(ours, tmp_path)
    hf = load_hf(transformers.AutoModelForMaskedLM, tmp_path)
    assert_logits_match(logits_of(hf, **batch), logits_of(ours, **batch), batch["attention_mask"])


def test_refuses_what_bert_cannot_express(tmp_path):
    cfg = ModelConfig(
        vocab_size=VOCAB, d_model=32, n_layers=1, n_heads=2, residual="post", activation={"name": "gelu", "approximate": "tanh"},
        embedding_norm=True, head_transform=True, sliding_window=4,
    )
    with pytest.raises(ConfigError) as err:
        llm_modules.to_hf(MaskedLM(cfg), tmp_path / "out", family="bert")
    assert "approximate='tanh'" in str(err.value) and "sliding_window=4" in str(err.value)
    assert not (tmp_path / "out" / "config.json").exists()
    tiny_bert(hidden_act="gelu_new").save_pretrained(tmp_path / "tanh")
    with pytest.raises(ConfigError, match="hidden_act 'gelu_new'"):
        llm_modules.from_hf(tmp_path / "tanh")
