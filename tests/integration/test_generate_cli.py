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
from llm_modules.generation.prompts import continuation_text, left_pad

VOCAB = 420


FILES = ("textwrap.py", "shlex.py", "colorsys.py")


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.train([str(stdlib_root() / f) for f in FILES], vocab_size=VOCAB, num_sentinels=8)


@pytest.fixture(scope="module")
def prefix_tok() -> Tokenizer:
    """LLaMA-style: a dummy prefix, so a piece decoded alone at the start loses its leading space."""
    return Tokenizer.train([str(stdlib_root() / f) for f in FILES], vocab_size=VOCAB, num_sentinels=8,
                           add_dummy_prefix=True)


def saved(path, tok, kind=CausalLM, **overrides):
    torch.manual_seed(0)
    settings = dict(vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=4, max_seq_len=96, position="rope",
                    norm="rmsnorm", attention="sdpa")
    module = kind(ModelConfig(**{**settings, **overrides}))
    module.tokenizer_bytes = tok.to_bytes()
    save_checkpoint(module, path)
    return module.eval()


@pytest.mark.parametrize("which", ["tok", "prefix_tok"])
def test_streamed_text_is_the_decoded_greedy_generation(which, request, tmp_path, capsys):
    tokenizer = request.getfixturevalue(which)
    module = saved(tmp_path / "m.ckpt", tokenizer)
    args = ["generate", str(tmp_path / "m.ckpt"), "--prompt", "def wrap(text):", "--max-new-tokens", "12"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    prompt = tokenizer.encode("def wrap(text):")
    ids = module.generate(torch.tensor([prompt]), max_new_tokens=12)[0, len(prompt):].tolist()
    assert ids and tokenizer.eos_id not in ids  # an untrained model: the continuation is all printable pieces
    assert printed == "def wrap(text):" + continuation_text(tokenizer, prompt, ids) + "\n"
    assert main([*args, "--output", str(tmp_path / "g.jsonl")]) == 0  # the same text as a record
    record = json.loads((tmp_path / "g.jsonl").read_text())
    assert record["tokens"] == ids and printed == record["prompt"] + record["generation"] + "\n"


def test_continuation_keeps_the_space_a_dummy_prefix_drops(prefix_tok):
    new = prefix_tok.encode("os")  # "▁os": decoded alone, the space goes
    assert prefix_tok.decode(new) == "os"
    assert continuation_text(prefix_tok, prefix_tok.encode("import"), new) == " os"


def test_stream_waits_for_the_bytes_of_a_character(tok):
    from io import StringIO

    from llm_modules.cli.generate_cmd import TerminalStream

    pieces = tok.encode("x 漢")
    assert len(pieces) >= 4  # the character is three byte pieces
    out = StringIO()
    stream = TerminalStream(tok, tok.encode("y ="), out=out)
    for piece in pieces:
        stream(torch.tensor([piece]))
        assert "\ufffd" not in out.getvalue()
    assert out.getvalue() == "x 漢"


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
    # with a tokenizer.json it can: its post-processor adds BOS, as transformers' does
    write_word_tokenizer(tmp_path / "hf", vocab_size=64)
    assert main(["generate", str(tmp_path / "hf"), "--prompt", "w7 w9 w11", "--max-new-tokens", "6"]) == 0
    new = expected[: expected.index(2) if 2 in expected else None]
    words = "".join(f" w{t}" for t in new if t > 2)  # <pad> (0) is a special token: not printed
    assert capsys.readouterr().out == "w7 w9 w11" + words + "\n"


def write_word_tokenizer(folder, vocab_size: int) -> None:
    """A tokenizer.json with words w3..w{vocab_size-1} and <pad>, <s>, </s> (0, 1, 2), adding <s> in front."""
    from tokenizers import Tokenizer as Backend
    from tokenizers import models, pre_tokenizers, processors

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, vocab_size)}}
    backend = Backend(models.WordLevel(vocab, unk_token="<pad>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.add_special_tokens(["<pad>", "<s>", "</s>"])
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    backend.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>",
                                                              "pad_token": "<pad>"}))


def test_fill_mask_prints_the_top_guesses_for_each_mask(tok, tmp_path, capsys):
    module = saved(tmp_path / "bert.ckpt", tok, kind=MaskedLM, position="learned")
    bert = str(tmp_path / "bert.ckpt")
    assert main(["generate", bert, "--fill-mask", "--prompt", "x = <mask>(y, <mask>)", "--top-k", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "x = <mask>(y, <mask>)" and len(lines) == 3
    assert all(line.startswith(f"  mask {n}: ") and line.count('"') >= 6 for n, line in enumerate(lines[1:], 1))
    prompts = ["a <mask> b = 1", "<mask>"]  # different lengths: right-padded in one batch
    (tmp_path / "p.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    assert main(["generate", bert, "--fill-mask", "--prompts-file", str(tmp_path / "p.jsonl"),
                 "--output", str(tmp_path / "m.jsonl")]) == 0
    records = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in records] == prompts and [len(r["masks"]) for r in records] == [1, 1]
    alone = module.fill_mask(torch.tensor([[tok.mask_id]]), top_k=5)
    assert records[1]["masks"][0]["tokens"] == alone.token_ids[0].tolist()
    assert records[1]["masks"][0]["texts"] == [tok.decode([t]) for t in alone.token_ids[0].tolist()]


def test_quantized_checkpoint_and_dtype(tok, tmp_path, capsys):
    from llm_modules.checkpoint import save_quantized
    from llm_modules.quantization import quantize

    module = saved(tmp_path / "m.ckpt", tok)
    args = ["--prompt", "import os", "--max-new-tokens", "5", "--no-stream"]
    assert main(["generate", str(tmp_path / "m.ckpt"), *args, "--dtype", "bfloat16"]) == 0
    assert capsys.readouterr().out.startswith("import os")
    save_quantized(quantize(module, "int8-weight"), tmp_path / "q.ckpt")
    assert main(["generate", str(tmp_path / "q.ckpt"), *args]) == 0
    prompt = tok.encode("import os")
    new = module.generate(torch.tensor([prompt]), max_new_tokens=5)[0, len(prompt):].tolist()
    assert capsys.readouterr().out == "import os" + continuation_text(tok, prompt, new) + "\n"
    assert main(["generate", str(tmp_path / "q.ckpt"), *args, "--dtype", "bfloat16"]) == 2
    assert "quantized" in capsys.readouterr().err


def test_errors_are_one_line_and_leave_the_output_alone(tok, tmp_path, capsys):
    """Each bad input fails before the output is written: an existing --output (replaceable here, with
    --overwrite) is left as it was."""
    saved(tmp_path / "m.ckpt", tok)
    saved(tmp_path / "bert.ckpt", tok, kind=MaskedLM, position="learned")
    out = tmp_path / "gen.jsonl"
    out.write_text("keep me\n")
    (tmp_path / "empty.txt").write_text("\n")
    model = str(tmp_path / "m.ckpt")
    over = ["--output", str(out), "--overwrite"]
    cases = [
        (["generate", str(tmp_path / "missing.ckpt"), "--prompt", "x"], "does not exist"),
        (["generate", model, "--prompts-file", str(tmp_path / "none.txt"), *over], "does not exist"),
        (["generate", model, "--prompts-file", str(tmp_path / "empty.txt"), *over], "no prompts"),
        (["generate", model, "--prompt-ids", f"3 {VOCAB}", *over], "outside"),
        (["generate", model, "--prompt-ids", "a b"], "integers"),
        (["generate", model, "--prompt", "x", "--num-beams", "0", *over], "num_beams"),
        (["generate", str(tmp_path / "bert.ckpt"), "--prompt", "x"], "--fill-mask"),
        (["generate", str(tmp_path / "bert.ckpt"), "--fill-mask", "--prompt", "x"], "holds no mask"),
        (["generate", str(tmp_path / "bert.ckpt"), "--fill-mask", "--prompt", "<mask>", "--sample"], "--sample"),
        (["generate", model, "--fill-mask", "--prompt", "x"], "needs a MaskedLM"),
        (["generate", model, "--prompt", "x", "--prompts-file", "p.txt", *over], "not allowed with"),
        (["generate", model, "--prompt", "x", "--greedy", "--sample"], "not allowed with"),
        (["generate", model], "required"),
        (["generate", model, "--prompt", "x", "--device", "nowhere"], "--device"),
        (["generate", model, "--prompt", "x", "--tokenizer", str(tmp_path / "none.json")], "does not exist"),
    ]
    for args, message in cases:
        assert main(args) == 2, args
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, (args, err)
    assert out.read_text() == "keep me\n"


def test_a_bf16_folder_loads_in_the_dtype_asked(tmp_path, capsys):
    """--dtype on a folder is the load's dtype (RoPE's tables stay fp32); without it, as stored."""
    transformers = pytest.importorskip("transformers")
    from llm_modules.cli.generate_cmd import load_model, place

    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    transformers.LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(tmp_path / "hf")
    for asked, expected in ((None, torch.bfloat16), ("float32", torch.float32), ("float16", torch.float16)):
        module = place(load_model(str(tmp_path / "hf"), asked), "cpu", asked)
        assert {p.dtype for p in module.parameters()} == {expected}, asked
        assert module.model.stack.position.inv_freq.dtype == torch.float32
    assert main(["generate", str(tmp_path / "hf"), "--prompt-ids", "1 7 9", "--max-new-tokens", "3",
                 "--dtype", "float32"]) == 0
    assert capsys.readouterr().out.startswith("1 7 9 -> ")
