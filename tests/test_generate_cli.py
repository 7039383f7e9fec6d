"""``llm-modules generate`` end to end, in-process: streaming, prompt files, Hugging Face folders,
and one-line errors that leave existing files alone."""

from __future__ import annotations

import json

import pytest
import torch

from llm_modules import CausalLM, MaskedLM, ModelConfig, Seq2SeqLM
from llm_modules.checkpoint import save_checkpoint
from llm_modules.cli import main
from llm_modules.data.sources import stdlib_root
from llm_modules.data.tokenizer import Tokenizer
from llm_modules.generation.prompts import left_pad

VOCAB = 420


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    files = [str(stdlib_root() / f) for f in ("textwrap.py", "shlex.py", "colorsys.py")]
    return Tokenizer.train(files, vocab_size=VOCAB, num_sentinels=8)


def saved(path, tok, kind=CausalLM, **overrides):
    torch.manual_seed(0)
    settings = dict(vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=4, max_seq_len=96, position="rope",
                    norm="rmsnorm", attention="sdpa")
    module = kind(ModelConfig(**{**settings, **overrides}))
    module.tokenizer_bytes = tok.to_bytes()
    save_checkpoint(module, path)
    return module.eval()


def test_streamed_text_is_the_decoded_greedy_generation(tok, tmp_path, capsys):
    module = saved(tmp_path / "m.ckpt", tok)
    assert main(["generate", str(tmp_path / "m.ckpt"), "--prompt", "def wrap(text):", "--max-new-tokens", "12"]) == 0
    printed = capsys.readouterr().out
    prompt = torch.tensor([tok.encode("def wrap(text):")])
    ids = module.generate(prompt, max_new_tokens=12)
    assert printed == "def wrap(text):" + tok.decode(ids[0, prompt.shape[1]:].tolist()) + "\n"


def test_prompts_file_gives_one_record_per_prompt_in_order(tok, tmp_path, capsys):
    module = saved(tmp_path / "m.ckpt", tok)
    prompts = ["import os", "class Lexer:", "x = 1"]
    (tmp_path / "p.txt").write_text("\n".join(prompts) + "\n\n")
    out = tmp_path / "gen.jsonl"
    args = ["generate", str(tmp_path / "m.ckpt"), "--prompts-file", str(tmp_path / "p.txt"), "--max-new-tokens", "6",
            "--batch-size", "2", "--num-beams", "2", "--output", str(out)]
    assert main(args) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["prompt"] for r in records] == prompts
    ids, mask = left_pad([tok.encode(p) for p in prompts[:2]], module.config.pad_token_id)
    expected = module.generate(ids, attention_mask=mask, max_new_tokens=6, num_beams=2)
    eos = tok.eos_id
    for record, row in zip(records, expected):
        new = row[ids.shape[1]:].tolist()
        if eos in new:
            new = new[: new.index(eos) + 1]
        assert record["tokens"] == new and record["generation"] == tok.decode(new)


def test_sampling_flags_are_reproducible_and_checked(tok, tmp_path, capsys):
    saved(tmp_path / "m.ckpt", tok)
    args = ["generate", str(tmp_path / "m.ckpt"), "--prompt-ids", "5 17 42", "--max-new-tokens", "8",
            "--sample", "--temperature", "1.5", "--top-p", "0.9", "--seed", "3", "--no-stream"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert main(args) == 0
    assert capsys.readouterr().out == first
    assert main(["generate", str(tmp_path / "m.ckpt"), "--prompt", "x", "--temperature", "0.5"]) == 2
    assert "--sample" in capsys.readouterr().err


def test_seq2seq_reads_the_prompt_with_its_encoder(tok, tmp_path, capsys):
    module = saved(tmp_path / "t5.ckpt", tok, kind=Seq2SeqLM, position="t5", norm="rmsnorm")
    assert main(["generate", str(tmp_path / "t5.ckpt"), "--prompt", "quote this", "--max-new-tokens", "5",
                 "--no-stream"]) == 0
    printed = capsys.readouterr().out
    ids = module.generate(torch.tensor([tok.encode("quote this")]), max_new_tokens=5)
    new = ids[0, 1:].tolist()
    if tok.eos_id in new:
        new = new[: new.index(tok.eos_id) + 1]
    assert printed == "quote this" + tok.decode(new) + "\n"


def test_hugging_face_folder_with_prompt_ids(tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                      pad_token_id=0, bos_token_id=1, eos_token_id=2)
    hf = transformers.LlamaForCausalLM(config).eval()
    hf.save_pretrained(tmp_path / "hf")
    assert main(["generate", str(tmp_path / "hf"), "--prompt-ids", "1 7 9 11", "--max-new-tokens", "6"]) == 0
    printed = capsys.readouterr().out.strip()
    expected = hf.generate(torch.tensor([[1, 7, 9, 11]]), max_new_tokens=6, do_sample=False, pad_token_id=0,
                           eos_token_id=2)[0, 4:].tolist()
    assert printed == "1 7 9 11 -> " + " ".join(map(str, expected))
    # an HF folder without a tokenizer cannot take text
    assert main(["generate", str(tmp_path / "hf"), "--prompt", "hello"]) == 2
    assert "--tokenizer" in capsys.readouterr().err


def test_errors_are_one_line_and_leave_the_output_alone(tok, tmp_path, capsys):
    saved(tmp_path / "m.ckpt", tok)
    saved(tmp_path / "bert.ckpt", tok, kind=MaskedLM, position="learned")
    out = tmp_path / "gen.jsonl"
    out.write_text("keep me\n")
    (tmp_path / "empty.txt").write_text("\n")
    model = str(tmp_path / "m.ckpt")
    cases = [
        (["generate", str(tmp_path / "missing.ckpt"), "--prompt", "x"], "does not exist"),
        (["generate", model, "--prompts-file", str(tmp_path / "none.txt"), "--output", str(out)], "does not exist"),
        (["generate", model, "--prompts-file", str(tmp_path / "empty.txt"), "--output", str(out)], "no prompts"),
        (["generate", model, "--prompt-ids", f"3 {VOCAB}", "--output", str(out)], "outside"),
        (["generate", model, "--prompt-ids", "a b"], "integers"),
        (["generate", model, "--prompt", "x", "--num-beams", "0", "--output", str(out)], "num_beams"),
        (["generate", str(tmp_path / "bert.ckpt"), "--prompt", "x"], "fill_mask"),
    ]
    for args, message in cases:
        assert main(args) == 2, args
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, (args, err)
    assert out.read_text() == "keep me\n"
    with pytest.raises(SystemExit):  # both a prompt and a prompts file: argparse refuses
        from llm_modules.cli.generate_cmd import build_parser

        build_parser().parse_args([model, "--prompt", "x", "--prompts-file", "p.txt"])
