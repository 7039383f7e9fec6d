"""PreferenceDataModule: a worked example of the batch (ids written out by hand with a tokenizer whose
ids are known), PrefixLM prefixes, templates, margins, truncation, refusals, and the shipped tiny set."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from _finetune_helpers import base  # noqa: F401  (the fixture: its tokenizer knows the task words)
from test_instruction_data import (  # noqa: F401
    COLON,
    EOS,
    GT,
    NL,
    PAD,
    SP,
    A,
    B,
    C,
    D,
    char_tok,
    write_jsonl,
)

from llm_modules.data import PreferenceDataModule
from llm_modules.registry import ConfigError

X = -100
TINY = Path(__file__).parents[1] / "data" / "preferences" / "tiny.jsonl"


def batch_of(records, tok, tmp_path, **options):
    path = write_jsonl(tmp_path / "prefs.jsonl", records)
    settings = dict(train_paths=[str(path)], val_paths=[str(path)], tokenizer=str(tok), kind="CausalLM", max_len=16,
                    min_response_len=1, batch_size=8)
    data = PreferenceDataModule(**{**settings, **options})
    data.setup("fit")
    return data, next(iter(data.val_dataloader())), path


def test_worked_example_labels_cover_exactly_the_response_and_eos(char_tok, tmp_path):
    records = [{"prompt": "ab\n", "chosen": "cd", "rejected": "c"},
               {"prompt": "a\n", "chosen": "d", "rejected": "dd", "margin": 1.5}]
    _, batch, path = batch_of(records, char_tok, tmp_path)
    assert batch["chosen_input_ids"].tolist() == [[A, B, NL, C, D, EOS], [A, NL, D, EOS, PAD, PAD]]
    assert batch["chosen_labels"].tolist() == [[X, X, C, D, EOS, X], [X, D, EOS, X, X, X]]
    assert batch["chosen_attention_mask"].tolist() == [[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]]
    assert batch["rejected_input_ids"].tolist() == [[A, B, NL, C, EOS], [A, NL, D, D, EOS]]
    assert batch["rejected_labels"].tolist() == [[X, X, C, EOS, X], [X, D, D, EOS, X]]
    # the first record has no margin: 0 there; keys name the file and line
    assert batch["margin"].tolist() == [0.0, 1.5]
    assert batch["keys"] == [f"{path}:1", f"{path}:2"]
    assert "prefix_lengths" not in batch


def test_prefix_lm_rows_carry_the_prompt_length_and_templates_wrap_the_prompt(char_tok, tmp_path):
    records = [{"prompt": "ab", "chosen": "c", "rejected": "d"}]
    _, batch, _ = batch_of(records, char_tok, tmp_path, kind="PrefixLM", template={"prompt_no_input": ">{instruction}:"})
    assert batch["chosen_input_ids"].tolist() == [[GT, A, B, COLON, C, EOS]]
    assert batch["rejected_input_ids"].tolist() == [[GT, A, B, COLON, D, EOS]]
    assert batch["prefix_lengths"].tolist() == [4]
    assert "margin" not in batch


def test_truncation_cuts_the_prompt_once_for_both_responses(char_tok, tmp_path, caplog):
    """max_len 8: the longer response (5 tokens) keeps 3 (min_response_len), the prompt keeps its last
    4 tokens, the shorter response fits; the EOS stays. A pair whose responses end up the same is
    left out; ``drop`` leaves long records out."""
    records = [{"prompt": "abcdab\n", "chosen": "ccccc", "rejected": "dd"},
               {"prompt": "a\n", "chosen": "abcdab", "rejected": "abcdac"},  # the same once cut
               {"prompt": "a\n", "chosen": "b", "rejected": "c"}]
    with caplog.at_level(logging.INFO, logger="llm_modules.data.preferences"):
        data, batch, _ = batch_of(records, char_tok, tmp_path, max_len=8, min_response_len=3)
    assert batch["chosen_input_ids"][0].tolist() == [D, A, B, NL, C, C, C, EOS]
    assert batch["rejected_input_ids"][0].tolist() == [D, A, B, NL, D, D, EOS]
    assert len(data.val) == 2 and data.counts["identical"] == 2  # once per split (train and val read the file)
    assert "prompts cut from the left" in caplog.text and "identical responses" in caplog.text
    data, batch, _ = batch_of(records, char_tok, tmp_path, max_len=8, min_response_len=3, truncation="drop")
    assert batch["chosen_input_ids"].tolist() == [[A, NL, B, EOS]]


@pytest.mark.parametrize(
    "record, message",
    [({"prompt": "a", "chosen": "b"}, "field 'rejected' is missing"),
     ({"prompt": "a", "chosen": 3, "rejected": "c"}, "field 'chosen' is missing or not a string"),
     ({"prompt": "a", "chosen": "b", "rejected": "c", "margin": "big"}, "field 'margin' must be a number"),
     ({"prompt": "", "chosen": "b", "rejected": "c"}, "the prompt is empty")],
)
def test_bad_records_name_the_file_line_and_field(char_tok, tmp_path, record, message):
    with pytest.raises(ConfigError, match=message) as err:
        batch_of([record], char_tok, tmp_path)
    assert "prefs.jsonl:1" in str(err.value)


def test_encoder_decoder_is_refused_with_the_way_out(char_tok, tmp_path):
    with pytest.raises(ConfigError, match=r"data.kind='Seq2SeqLM'.*decoder LMs \(CausalLM, PrefixLM\)"):
        PreferenceDataModule(paths=[str(TINY)], kind="Seq2SeqLM")


def test_the_shipped_tiny_set(base):
    data = PreferenceDataModule(paths=[str(TINY)], tokenizer=str(base.tokenizer), kind="CausalLM", max_len=128,
                                batch_size=4, val_fraction=0.2)
    data.setup("fit")
    assert len(data.train) + len(data.val) == 300 and 40 <= len(data.val) <= 80
    assert data.counts["identical"] == 0 and data.counts["dropped"] == 0
    batch = next(iter(data.train_dataloader()))
    assert batch["chosen_input_ids"].shape[0] == 4 and len(batch["keys"]) == 4
    for side in ("chosen", "rejected"):  # every row scores at least its EOS, and nothing in the padding
        labels, mask = batch[f"{side}_labels"], batch[f"{side}_attention_mask"]
        assert ((labels != X).sum(1) >= 1).all() and (labels[mask == 0] == X).all()
