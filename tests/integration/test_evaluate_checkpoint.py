"""``llm-modules validate|test --ckpt_path X --data.paths [FILE]``: a checkpoint and a data file are
enough. The model comes from the checkpoint, the file is tokenized with the checkpoint's own
tokenizer, every document is evaluated, and the logged loss equals one computed by hand."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from llm_modules import CausalLM, ModelConfig
from llm_modules.checkpoint import save_checkpoint
from llm_modules.cli import main
from llm_modules.data.sources import stdlib_root
from llm_modules.data.tokenizer import Tokenizer

from _fit_helpers import metric_rows

VOCAB = 420
SEQ = 64


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    files = [str(stdlib_root() / f) for f in ("textwrap.py", "shlex.py", "colorsys.py")]
    return Tokenizer.train(files, vocab_size=VOCAB, num_sentinels=8)


@pytest.fixture
def checkpoint(tok, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LLM_MODULES_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(0)
    module = CausalLM(ModelConfig(vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=4, max_seq_len=SEQ,
                                  position="rope", norm="rmsnorm", attention="sdpa"))
    module.tokenizer_bytes = tok.to_bytes()
    return module.eval(), save_checkpoint(module, tmp_path / "model.ckpt")


def expected_loss(module, tok, text: str) -> float:
    """The document and its EOS cut into blocks of SEQ tokens (remainder dropped), next-token loss."""
    ids = tok.encode(text) + [tok.eos_id]
    blocks = torch.tensor(ids[: len(ids) // SEQ * SEQ]).view(-1, SEQ)
    with torch.no_grad():
        logits = module(blocks)
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), blocks[:, 1:].flatten()).item()


@pytest.mark.parametrize("command", ["validate", "test"])
def test_checkpoint_and_a_file_are_enough(checkpoint, tok, tmp_path, command):
    module, path = checkpoint
    text = (stdlib_root() / "colorsys.py").read_text()
    (tmp_path / "eval.py").write_text(text)
    args = [command, "--ckpt_path", str(path), "--data.paths", "[eval.py]", "--trainer.enable_progress_bar", "false"]
    assert main(args) == 0
    split = "val" if command == "validate" else "test"
    run = tmp_path / "runs" / "llm" / "eval" / "version_0"
    (loss,) = [v for _, v in metric_rows(run, f"{split}/loss")]
    assert loss == pytest.approx(expected_loss(module, tok, text), abs=1e-4)
    (ppl,) = [v for _, v in metric_rows(run, f"{split}/ppl")]
    assert ppl == pytest.approx(math.exp(loss), rel=1e-4)
    assert metric_rows(run, f"{split}/bits_per_byte")
    # the file was tokenized with the checkpoint's tokenizer, not a new one
    (used,) = (tmp_path / "cache" / "tokenizers").glob("checkpoint-*.model")
    assert used.read_bytes() == tok.to_bytes()


def test_missing_inputs_are_one_line_errors(checkpoint, tmp_path, capsys):
    _, path = checkpoint
    cases = [
        (["validate", "--ckpt_path", str(tmp_path / "nope.ckpt"), "--data.paths", "[x.py]"], "does not exist"),
        (["validate", "--ckpt_path", str(path)], "--data.paths"),
        (["validate", "--ckpt_path", str(path), "--data.paths", "[missing.txt]"], "missing.txt"),
    ]
    # a checkpoint saved without a tokenizer: never train one on the evaluation file
    bare = save_checkpoint(CausalLM(ModelConfig(vocab_size=VOCAB, d_model=32, n_layers=1, n_heads=4)),
                           tmp_path / "bare.ckpt")
    cases.append((["validate", "--ckpt_path", str(bare), "--data.paths", "[x.py]"], "holds no tokenizer"))
    for args, message in cases:
        assert main(args) == 2, args
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, (args, err)


def test_fit_refuses_evaluation_only_data(tok, tmp_path):
    from llm_modules.data import TextDataModule
    from llm_modules.registry import ConfigError

    (tmp_path / "a.py").write_text("x = 1\n" * 200)
    (tmp_path / "b.py").write_text("y = 2\n" * 200)
    model = tok.save(tmp_path / "tok.model")
    data = TextDataModule(paths=[str(tmp_path / "a.py"), str(tmp_path / "b.py")], tokenizer=str(model),
                          train_tokenizer=False, seq_len=16, val_fraction=1.0, cache_dir=str(tmp_path / "cache"))
    with pytest.raises(ConfigError, match="nothing to train on"):
        data.setup("fit")
        data.train_dataloader()


def test_generation_metrics_chosen_at_evaluation_time(checkpoint, tmp_path):
    """A checkpoint trained without generation metrics gets them from the evaluating command line."""
    _, path = checkpoint
    records = [{"input": f"def f{i}(x):", "output": f"return x + {i}"} for i in range(6)]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    args = ["test", "--ckpt_path", str(path), "--data", "llm_modules.data.PairsDataModule",
            "--data.val_paths", "[pairs.jsonl]", "--model.evaluation.metrics", "[exact_match, bleu]",
            "--model.evaluation.max_new_tokens", "4", "--trainer.enable_progress_bar", "false"]
    assert main(args) == 0
    run = tmp_path / "runs" / "llm" / "eval" / "version_0"
    (exact,) = [v for _, v in metric_rows(run, "test/exact_match")]
    assert exact == 0.0  # an untrained model does not write "return x + i"
    assert metric_rows(run, "test/bleu") and metric_rows(run, "test/loss")
