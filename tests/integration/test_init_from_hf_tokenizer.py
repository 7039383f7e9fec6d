"""``model.init_from: HF_FOLDER`` carries the folder's tokenizer (tokenizer.json, its chat template and
generation_config.json's EOS list) through a LoRA fit with ``template: from_checkpoint``, the
checkpoint, ``generate`` and ``export``; a conflicting data.tokenizer is refused in one line.
In-process CLI runs of a few steps on a tiny random Llama-3-style folder made here."""

from __future__ import annotations

import json

import pytest
import torch

from llm_modules.cli import main
from llm_modules.data.hf_tokenizer import load_tokenizer

from _finetune_helpers import INSTRUCTIONS, base  # noqa: F401  (base: the fixture)
from _fit_helpers import CONFIGS
from _hf_tokenizer_helpers import EOT, eos_list, write_llama_folder

LORA = CONFIGS / "finetune" / "lora.yaml"
WORDS = ["hello", "world", "tokens", "model", "fox", "dog", "quick", "lazy"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """The embedding table is larger than the tokenizer (384 rows, 320 tokens), as Qwen's is: the
    model's own tokenizer is accepted with it."""
    return write_llama_folder(tmp_path_factory.mktemp("hf") / "llama", padded_vocab=384)


def chats(path, n: int = 24):
    rows = []
    for i in range(n):
        a, b = WORDS[i % len(WORDS)], WORDS[(3 * i + 1) % len(WORDS)]
        rows.append({"messages": [{"role": "user", "content": f"Say {a} {b}."},
                                  {"role": "assistant", "content": f"{a} {b}"}]})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def fit_args(folder, data, *extra, steps: int = 3):
    return ["fit", "--config", str(LORA), "--model.init_args.init_from", str(folder),
            "--data.init_args.paths", f"[{data}]", "--data.init_args.template", "from_checkpoint",
            "--data.init_args.max_len", "64", "--data.init_args.min_response_len", "4",
            "--data.init_args.batch_size", "8", "--trainer.max_steps", str(steps),
            "--trainer.val_check_interval", str(steps), "--trainer.num_sanity_val_steps", "0",
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false", *extra]


def test_fit_from_a_folder_tokenizes_with_its_tokenizer_and_carries_it_to_export(folder, tmp_path, monkeypatch,
                                                                                 capsys):
    from transformers import AutoTokenizer, GenerationConfig

    monkeypatch.chdir(tmp_path)
    assert main(fit_args(folder, chats(tmp_path / "chat.jsonl"))) == 0
    ckpt = tmp_path / "runs" / "llm" / "version_0" / "checkpoints" / "last.ckpt"
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)
    own = load_tokenizer(folder / "tokenizer.json")
    assert saved["tokenizer"] == own.to_bytes()  # the folder's tokenizer, chat template and EOS list

    assert main(["generate", str(ckpt), "--prompt", "Say hello world.", "--max-new-tokens", "4",
                 "--output", str(tmp_path / "out.jsonl")]) == 0
    tokens = json.loads((tmp_path / "out.jsonl").read_text())["tokens"]
    assert len(tokens) == 4 or tokens[-1] in eos_list(folder)

    assert main(["export", str(ckpt), str(tmp_path / "exported")]) == 0
    theirs, again = AutoTokenizer.from_pretrained(folder), AutoTokenizer.from_pretrained(tmp_path / "exported")
    assert again.chat_template == theirs.chat_template and again.eos_token == EOT
    assert again("Say hello world.")["input_ids"] == theirs("Say hello world.")["input_ids"]
    assert GenerationConfig.from_pretrained(tmp_path / "exported").eos_token_id == eos_list(folder)


def test_text_data_reads_with_the_folder_tokenizer_and_a_conflicting_one_is_refused(folder, tmp_path, monkeypatch,
                                                                                     capsys):
    monkeypatch.chdir(tmp_path)
    text = tmp_path / "text"
    text.mkdir()
    for i, w in enumerate(WORDS * 3):  # one document per file
        (text / f"{i}.txt").write_text(f"The quick {w} jumps over the lazy {w}. " * 4)
    common = ["fit", "--model", "llm_modules.CausalLM", "--model.init_from", str(folder),
              "--data", "llm_modules.data.TextDataModule", "--data.paths", f"[{text}]", "--data.seq_len", "16",
              "--data.val_fraction", "0.2",
              "--data.batch_size", "4", "--data.cache_dir", str(tmp_path / "cache"), "--trainer.max_steps", "2",
              "--trainer.limit_val_batches", "1", "--trainer.enable_progress_bar", "false",
              "--trainer.enable_model_summary", "false"]
    assert main(common) == 0
    assert not (tmp_path / "cache" / "tokenizers").exists()  # none trained: the folder's was used
    ckpt = next((tmp_path / "runs").rglob("last.ckpt"))
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert saved["tokenizer"] == load_tokenizer(folder / "tokenizer.json").to_bytes()
    # evaluating the checkpoint on text reads it with the checkpoint's tokenizer (written out as a file)
    assert main(["validate", "--ckpt_path", str(ckpt), "--data.paths", f"[{text}]", "--data.seq_len", "16",
                 "--data.cache_dir", str(tmp_path / "cache"), "--trainer.enable_progress_bar", "false"]) == 0
    assert not (tmp_path / "cache" / "tokenizers").exists()

    other = tmp_path / "other"
    other.mkdir()
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (other / "tokenizer.json").write_bytes((folder / "tokenizer.json").read_bytes())
    (other / "tokenizer_config.json").write_text(json.dumps({**config, "eos_token": "<|end_of_text|>"}))
    capsys.readouterr()
    assert main([*common, "--data.tokenizer", str(other / "tokenizer.json")]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]  # (earlier lines: logging to a closed capture)
    assert line.startswith("llm-modules fit: error: data.tokenizer:") and "is not the one model.init_from" in line


def test_from_checkpoint_without_a_template_is_one_line(folder, tmp_path, monkeypatch, capsys):
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        (bare / name).write_bytes((folder / name).read_bytes())
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (bare / "tokenizer_config.json").write_text(json.dumps({k: v for k, v in config.items() if k != "chat_template"}))
    monkeypatch.chdir(tmp_path)
    assert main(fit_args(bare, chats(tmp_path / "chat.jsonl"))) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("llm-modules fit: error: data.template: from_checkpoint needs the model's chat template")


def test_a_folder_with_a_sentencepiece_tokenizer_model_carries_it(base, tmp_path, monkeypatch):
    """LLaMA-2-style folders hold tokenizer.model only: that is the run's tokenizer then."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    hf_config = LlamaConfig(vocab_size=base.config.vocab_size, hidden_size=32, intermediate_size=64,
                            num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=4,
                            max_position_embeddings=128, tie_word_embeddings=False)
    llama2 = tmp_path / "llama2"
    LlamaForCausalLM(hf_config).save_pretrained(llama2)
    (llama2 / "tokenizer.model").write_bytes(base.tokenizer.read_bytes())
    monkeypatch.chdir(tmp_path)
    assert main(["fit", "--config", str(LORA), "--model.init_args.init_from", str(llama2),
                 "--data.init_args.paths", f"[{INSTRUCTIONS}]", "--trainer.max_steps", "1",
                 "--trainer.num_sanity_val_steps", "0", "--trainer.limit_val_batches", "1",
                 "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]) == 0
    saved = torch.load(next((tmp_path / "runs").rglob("last.ckpt")), map_location="cpu", weights_only=True)
    assert saved["tokenizer"] == base.tokenizer.read_bytes()
