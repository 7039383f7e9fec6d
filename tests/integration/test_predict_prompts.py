"""``llm-modules predict`` with a PromptDataModule: a checkpoint and a prompts file in, one JSON
record per prompt out, in the file's order, equal to ``generate`` with the same options."""

from __future__ import annotations

import json

import pytest
import torch

from llm_modules import CausalLM, ModelConfig
from llm_modules.checkpoint import save_checkpoint
from llm_modules.cli import main
from llm_modules.data import PromptDataModule
from llm_modules.data.sources import stdlib_root
from llm_modules.data.tokenizer import Tokenizer
from llm_modules.generation.prompts import left_pad, new_tokens
from llm_modules.registry import ConfigError

VOCAB = 420
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.logger", "false"]


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    files = [str(stdlib_root() / f) for f in ("textwrap.py", "shlex.py", "colorsys.py")]
    return Tokenizer.train(files, vocab_size=VOCAB, num_sentinels=8)


def test_predict_writes_generations_in_prompt_order(tok, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    module = CausalLM(ModelConfig(vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=4, max_seq_len=64,
                                  position="alibi", norm="rmsnorm", attention="sdpa")).eval()
    module.tokenizer_bytes = tok.to_bytes()
    ckpt = save_checkpoint(module, tmp_path / "m.ckpt")
    prompts = ["import os", "class Lexer(object):", "x", "def split(s, comments=False):", "return"]
    (tmp_path / "prompts.txt").write_text("\n".join(prompts) + "\n")
    (tmp_path / "out.jsonl").write_text("old\n")
    args = ["predict", "--ckpt_path", str(ckpt), "--data", "llm_modules.data.PromptDataModule",
            "--data.prompts_file", "prompts.txt", "--data.output", "out.jsonl", "--data.batch_size", "2",
            "--data.generation", "{max_new_tokens: 7, num_beams: 2}", *QUIET]
    assert main(args) == 2, "an existing output is replaced only with data.overwrite"
    assert (tmp_path / "out.jsonl").read_text() == "old\n"
    assert main([*args, "--data.overwrite", "true"]) == 0
    records = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in records] == prompts
    for first in range(0, len(prompts), 2):  # the same batches, generated directly
        ids, mask = left_pad([tok.encode(p) for p in prompts[first:first + 2]], module.config.pad_token_id)
        out = module.generate(ids, mask, max_new_tokens=7, num_beams=2)
        expected = new_tokens(module, out, ids.shape[1], [tok.eos_id], module.config.pad_token_id)
        for record, tokens in zip(records[first:first + 2], expected):
            assert record["tokens"] == tokens and record["generation"] == tok.decode(tokens)


def test_prompt_data_module_checks_its_options(tmp_path):
    (tmp_path / "p.txt").write_text("a\n")
    with pytest.raises(ConfigError, match="top_p"):
        PromptDataModule(str(tmp_path / "p.txt"), generation={"do_sample": True, "top_p": 2.0})
    with pytest.raises(ConfigError, match="unknown option"):
        PromptDataModule(str(tmp_path / "p.txt"), generation={"max_tokens": 5})
    with pytest.raises(ConfigError, match="does not exist"):
        PromptDataModule(str(tmp_path / "none.txt"))
    with pytest.raises(ConfigError, match="batch_size"):
        PromptDataModule(str(tmp_path / "p.txt"), batch_size=0)


def test_predict_errors_are_one_line_and_leave_the_output_alone(tok, tmp_path, monkeypatch, capsys):
    from llm_modules import MaskedLM

    monkeypatch.chdir(tmp_path)
    bert = MaskedLM(ModelConfig(vocab_size=VOCAB, d_model=32, n_layers=1, n_heads=4, max_seq_len=64,
                                position="learned", norm="layernorm", attention="sdpa"))
    bert.tokenizer_bytes = tok.to_bytes()
    save_checkpoint(bert, tmp_path / "bert.ckpt")
    (tmp_path / "prompts.txt").write_text("x = <mask>\n")
    (tmp_path / "out.jsonl").write_text("old\n")
    base = ["predict", "--data", "llm_modules.data.PromptDataModule", "--data.output", "out.jsonl",
            "--data.overwrite", "true", *QUIET]
    cases = [
        (["--ckpt_path", "bert.ckpt", "--data.prompts_file", "none.txt"], "does not exist"),
        (["--ckpt_path", "bert.ckpt", "--data.prompts_file", "prompts.txt"], "--fill-mask"),
    ]
    for extra, message in cases:
        assert main([*base, *extra]) == 2, extra
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, (extra, err)
    assert (tmp_path / "out.jsonl").read_text() == "old\n"
