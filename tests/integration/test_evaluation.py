"""Evaluation: reference-pair batches per LM kind, generation metrics (BLEU, ROUGE, exact match) in
validate/test, and ``llm-modules validate`` on a checkpoint and a data file."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from _fit_helpers import SNIPPETS, metric_rows, tiny

from llm_modules.cli import main
from llm_modules.data import PairsDataModule, Tokenizer
from llm_modules.data.pairs import IGNORE_INDEX, Pair, PairCollator
from llm_modules.registry import ConfigError
from llm_modules.training.evaluation import (
    Bleu,
    ExactMatch,
    GenerationEvalConfig,
    RougeF,
    generate_texts,
)

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs"

# ---- reference-pair batches -------------------------------------------------------------------------------

PAIRS = [Pair([11, 12, 13], [21, 22, 3], "ab", "f:1"), Pair([14], [23, 3], "c", "f:2")]


def test_decoder_batches_score_exactly_the_reference_and_eos():
    batch = PairCollator("PrefixLM", pad_id=0, with_prompts=True)(PAIRS)
    assert batch["input_ids"].tolist() == [[11, 12, 13, 21, 22, 3], [14, 23, 3, 0, 0, 0]]  # right padding
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]]
    # labels[t] is the token at t+1: the reference + EOS, predicted from the prompt's last token on
    x = IGNORE_INDEX
    assert batch["labels"].tolist() == [[x, x, 21, 22, 3, x], [23, 3, x, x, x, x]]
    assert batch["prefix_lengths"].tolist() == [3, 1]
    assert batch["prompt_ids"].tolist() == [[11, 12, 13], [0, 0, 14]]  # left padding for generation
    assert batch["prompt_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    assert batch["references"] == ["ab", "c"]
    causal = PairCollator("CausalLM", pad_id=0)(PAIRS)
    assert "prefix_lengths" not in causal and "prompt_ids" not in causal  # training batches: no generation inputs
    assert torch.equal(causal["labels"], batch["labels"])


def test_seq2seq_batches():
    batch = PairCollator("Seq2SeqLM", pad_id=0, with_prompts=True)(PAIRS)
    assert batch["input_ids"].tolist() == [[11, 12, 13], [14, 0, 0]]
    assert batch["labels"].tolist() == [[21, 22, 3], [23, 3, IGNORE_INDEX]]
    assert torch.equal(batch["prompt_ids"], batch["input_ids"])  # the encoder reads the prompt as it is


@pytest.fixture(scope="module")
def tokenizer_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tok") / "tok.model"
    texts = [s * 3 for s in SNIPPETS * 20] + ["add two numbers: a + b = c\n" * 5] * 20
    Tokenizer.train(iter(texts), path, vocab_size=320, num_sentinels=8)
    return path


def write_pairs(path: Path, n: int = 24) -> Path:
    """A copy task: the reference is the source, so a tiny model learns something in a few steps."""
    words = ["add", "point", "print", "range", "return", "class", "import", "join"]
    with open(path, "w") as f:
        for i in range(n):
            text = f"{words[i % 8]} {words[(i * 3) % 8]}"
            f.write(json.dumps({"input": text, "output": text}) + "\n")
    return path


def test_pairs_data_module_tokenizes_splits_and_truncates(tokenizer_path, tmp_path):
    data = write_pairs(tmp_path / "pairs.jsonl")
    dm = PairsDataModule(paths=[str(data)], tokenizer=str(tokenizer_path), kind="CausalLM", val_fraction=0.25,
                         max_source_len=2, max_target_len=3, batch_size=4)
    dm.setup("fit")
    tok = dm.tokenizer
    assert len(dm.train) + len(dm.val) == 24 and dm.val and dm.train
    for pair in dm.train + dm.val:
        assert len(pair.source_ids) <= 2 and pair.target_ids[-1] == tok.eos_id and len(pair.target_ids) <= 3
        assert pair.source_ids == tok.encode(pair.reference)[:2]  # the copy task: prompt = reference
    batch = next(iter(dm.val_dataloader()))
    assert batch["references"] == [p.reference for p in dm.val[:4]]  # never truncated
    assert dm.bytes_per_token > 0
    # the whole file for validation
    everything = PairsDataModule(paths=[str(data)], tokenizer=str(tokenizer_path), kind="Seq2SeqLM", val_fraction=1.0)
    everything.setup("validate")
    assert len(everything.val) == 24 and not everything.train


def test_a_record_missing_a_field_names_file_line_and_field(tokenizer_path, tmp_path):
    data = tmp_path / "bad.jsonl"
    data.write_text(json.dumps({"input": "a", "output": "b"}) + "\n" + json.dumps({"input": "a", "answer": "b"}) + "\n")
    dm = PairsDataModule(paths=[str(data)], tokenizer=str(tokenizer_path), kind="CausalLM")
    with pytest.raises(ConfigError, match=r"bad.jsonl line 2 has no text field 'output'"):
        dm.setup("fit")
    dm = PairsDataModule(val_paths=[str(data)], tokenizer=str(tokenizer_path), kind="CausalLM",
                         reference_field="answer")
    with pytest.raises(ConfigError, match=r"line 1 has no text field 'answer'"):
        dm.setup("validate")


# ---- metrics on fixed strings --------------------------------------------------------------------------------


def test_metric_values_by_hand():
    bleu = Bleu()
    bleu.update(["the cat sat on the mat"], ["the cat sat on the mat"])
    assert float(bleu.compute()) == pytest.approx(1.0)

    exact = ExactMatch()
    exact.update(["  a  b ", "a b", "A b"], ["a b", "a\nb", "a b"])  # whitespace-normalized; case counts
    exact.update(["x"], ["y"])
    assert float(exact.compute()) == pytest.approx(2 / 4)

    # ROUGE-1: prediction "the cat" vs reference "the cat sat down": 2 unigrams in common,
    # precision 2/2, recall 2/4, F1 = 2PR/(P+R) = 2/3
    rouge1 = RougeF("rouge1")
    rouge1.update(["the cat"], ["the cat sat down"])
    assert float(rouge1.compute()) == pytest.approx(2 / 3, abs=1e-4)


def test_answers_are_the_new_tokens_up_to_eos(tokenizer_path):
    """Decoders return the prompt then the answer; a Seq2SeqLM the decoder start then the answer."""
    tok = Tokenizer.load(tokenizer_path)
    answer, other = tok.encode("print"), tok.encode("range")
    prompt = torch.tensor([[0, 7, 8], [7, 8, 9]])

    def lm(kind, rows):
        out = torch.tensor(rows)
        return SimpleNamespace(kind=kind, tokenizer=tok, config=SimpleNamespace(eos_token_id=None, pad_token_id=tok.pad_id),
                               generate=lambda ids, mask, **options: out)

    eos, pad = tok.eos_id, tok.pad_id  # what follows the EOS is not part of the answer
    decoder = lm("CausalLM", [[0, 7, 8, *answer, eos, *other], [7, 8, 9, *other, eos, *answer]])
    batch = {"prompt_ids": prompt, "prompt_mask": (prompt > 0).long()}
    config = GenerationEvalConfig(metrics=["exact_match"])
    assert generate_texts(decoder, batch, config) == ["print", "range"]
    seq2seq = lm("Seq2SeqLM", [[pad, *answer, eos, *other]])
    assert generate_texts(seq2seq, {"prompt_ids": prompt[:1]}, config) == ["print"]


def test_generation_eval_config_is_checked():
    assert not GenerationEvalConfig().enabled
    assert GenerationEvalConfig(metrics=["rouge", "bleu"]).logged_names() == ["rouge1", "rouge2", "rougeL", "bleu"]
    with pytest.raises(ConfigError, match=r"model.evaluation.metrics: unknown metric 'blue' \(did you mean 'bleu'\?\)"):
        GenerationEvalConfig(metrics=["blue"])
    with pytest.raises(ConfigError, match="model.evaluation.max_batches"):
        GenerationEvalConfig(metrics=["bleu"], max_batches=0)


# ---- end to end ------------------------------------------------------------------------------------------


def model_args(kind: str = "CausalLM") -> list[str]:
    config = {"vocab_size": 320, "d_model": 32, "n_layers": 2, "n_heads": 4, "max_seq_len": 64}
    if kind == "Seq2SeqLM":
        config.update(n_layers=1, n_encoder_layers=1)
    return ["--model", f"llm_modules.{kind}", "--model.config", json.dumps(config),
            "--model.optim.lr", "3e-3", "--model.optim.warmup_steps", "2"]


QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


@pytest.mark.parametrize("kind", ["PrefixLM", "Seq2SeqLM"])
def test_fit_with_generation_metrics_logs_them(kind, tokenizer_path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = write_pairs(tmp_path / "pairs.jsonl")
    args = ["fit", *model_args(kind),
            "--model.evaluation.metrics", "[bleu, rouge, exact_match]", "--model.evaluation.max_new_tokens", "6",
            "--model.evaluation.max_batches", "1",
            "--data", "llm_modules.data.PairsDataModule", "--data.paths", f"[{data}]",
            "--data.tokenizer", str(tokenizer_path), "--data.val_fraction", "0.25", "--data.batch_size", "4",
            "--trainer.max_steps", "6", "--trainer.val_check_interval", "6", "--trainer.check_val_every_n_epoch", "null", "--trainer.num_sanity_val_steps", "1",
            *QUIET]
    assert main(args) == 0
    run = tmp_path / "runs" / "llm" / "version_0"
    for key in ("val/loss", "val/ppl", "val/bits_per_byte", "val/bleu", "val/rouge1", "val/rouge2", "val/rougeL",
                "val/exact_match"):
        rows = metric_rows(run, key)
        assert rows and all(0 <= v < float("inf") for _, v in rows), key
    assert [step for step, _ in metric_rows(run, "val/bleu")] == [5]  # not in the sanity check
    ckpt = run / "checkpoints" / "last.ckpt"
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)["hyper_parameters"]["evaluation"]
    assert saved["metrics"] == ["bleu", "rouge", "exact_match"]
    # test on the checkpoint with pairs: the tokenizer comes from the checkpoint, the metrics from its hparams
    assert main(["test", "--ckpt_path", str(ckpt), "--data", "llm_modules.data.PairsDataModule",
                 "--data.val_paths", f"[{data}]", *QUIET]) == 0
    tested = tmp_path / "runs" / "llm" / "eval" / "version_0"
    assert metric_rows(tested, "test/exact_match") and metric_rows(tested, "test/rougeL")
