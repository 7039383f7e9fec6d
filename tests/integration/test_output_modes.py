"""Files written for others to read get the mode a plain ``open()`` gives: 0644 under umask 022
(issue 19, section 4). ``tempfile.mkstemp`` gives 0600, and so does safetensors' own temporary file;
both used to reach the user (a tokenizer, an adapter, an exported model.safetensors nobody else could
read). Another umask is honoured the same way."""

from __future__ import annotations

import os
import stat

import pytest

from _fit_helpers import write_corpus
from _output_helpers import checkpoint_with_tokenizer, lora_checkpoint
from llm_modules import CausalLM
from llm_modules.checkpoint import load_checkpoint, save_checkpoint
from llm_modules.cli import main
from llm_modules.peft import save_adapter


@pytest.fixture(params=[0o022, 0o007], ids=["umask022", "umask007"])
def umask(request):
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_every_written_file_has_the_mode_open_gives(umask, tmp_path, capsys):
    expected = 0o666 & ~umask  # 0644 under umask 022
    ckpt = checkpoint_with_tokenizer(tmp_path / "m.ckpt")
    lora = lora_checkpoint(tmp_path / "lora.ckpt", ckpt)
    corpus = write_corpus(tmp_path / "corpus", files=5)
    commands = [
        ["convert", "to-hf", str(ckpt), str(tmp_path / "hf")],
        ["export", str(ckpt), str(tmp_path / "exported")],
        ["convert", "from-hf", str(tmp_path / "hf"), str(tmp_path / "back.ckpt")],
        ["export", str(lora), str(tmp_path / "merged.ckpt"), "--format", "ckpt", "--merge"],
        ["export", str(lora), str(tmp_path / "adapter.safetensors"), "--format", "adapter"],
        ["quantize", str(ckpt), str(tmp_path / "q.ckpt"), "--method", "int4-weight"],
        ["tokenizer", "train", str(corpus), "--out", str(tmp_path / "tok.model"), "--vocab-size", "400",
         "--num-sentinels", "2"],
        ["generate", str(ckpt), "--prompt-ids", "5 6", "--max-new-tokens", "2", "--output", str(tmp_path / "g.jsonl")],
        ["estimate", "--preset", "gpt2-tiny", "--json", str(tmp_path / "plan.json")],
    ]
    for argv in commands:
        assert main(argv) == 0, (argv, capsys.readouterr().err)
    module = load_checkpoint(ckpt)
    save_checkpoint(module, tmp_path / "saved.ckpt")
    module.tokenizer.save(tmp_path / "saved.model")
    tuned = CausalLM(init_from=str(ckpt), peft="lora")
    save_adapter(tmp_path / "saved.safetensors", tuned.model, tuned.peft_method, tuned.config)

    written = [p for p in tmp_path.rglob("*") if p.is_file() and "corpus" not in p.parts]
    names = {p.relative_to(tmp_path).as_posix() for p in written}
    assert {"hf/model.safetensors", "hf/tokenizer.model", "hf/tokenizer_config.json", "hf/config.json",
            "hf/generation_config.json", "exported/model.safetensors", "tok.model", "adapter.safetensors",
            "q.ckpt", "g.jsonl", "plan.json", "saved.safetensors"} <= names
    wrong = {p.relative_to(tmp_path).as_posix(): oct(mode(p)) for p in written if mode(p) != expected}
    assert not wrong, f"expected {oct(expected)}: {wrong}"
    assert mode(tmp_path / "hf") == 0o777 & ~umask  # the folder too, as mkdir gives it
