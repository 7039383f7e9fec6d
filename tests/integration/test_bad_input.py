"""Every bad input to the training commands (and estimate/generate) ends in one line: exit 2, no
traceback, naming the option, the fix and the closest match (issue 19, section 5)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from _fit_helpers import write_corpus
from llm_modules import CausalLM, ModelConfig
from llm_modules.checkpoint import save_checkpoint
from llm_modules.cli import main

BASE = """\
trainer:
  max_steps: 2
  limit_val_batches: 1
  num_sanity_val_steps: 0
  enable_progress_bar: false
  enable_model_summary: false
model:
  class_path: llm_modules.CausalLM
  init_args:
    config: {{vocab_size: 320, d_model: 32, n_layers: 1, n_heads: 4, max_seq_len: 64, position: rope}}
data:
  class_path: llm_modules.data.TextDataModule
  init_args:
    paths: [{corpus}]
    cache_dir: {cache}
    vocab_size: 320
    num_sentinels: 8
    seq_len: 32
    batch_size: 8
    val_fraction: 0.2
"""

@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad_input")
    base = root / "base.yaml"
    base.write_text(BASE.format(corpus=write_corpus(root / "corpus", files=12), cache=root / "cache"))
    typo = root / "typo.yaml"
    typo.write_text("trainer:\n  max_step: 5\n")
    plain = root / "other.pt"
    torch.save(torch.nn.Linear(2, 2).state_dict(), plain)  # weights, but not a Lightning checkpoint
    model = CausalLM(ModelConfig(vocab_size=64, d_model=16, n_layers=1, n_heads=2, max_seq_len=16, position="rope"))
    save_checkpoint(model, root / "tiny.ckpt")
    return {"base": base, "typo": typo, "plain": plain, "ckpt": root / "tiny.ckpt"}

FIT = ["fit", "--config", "{base}"]

CASES = {
    "misspelt key on the command line": (
        [*FIT, "--model.config.d_modle", "64"],
        ["unknown option 'model.config.d_modle'", "did you mean 'model.config.d_model'?", "n_heads"]),
    "misspelt key in YAML": (
        [*FIT, "--config", "{typo}"],
        ["unknown option 'trainer.max_step'", "did you mean 'trainer.max_steps'?", "llm-modules fit --help"]),
    "string for an int": (
        [*FIT, "--model.config.d_model", "big"], ["model.config.d_model", "'big'", "not an integer", "whole number"]),
    "string for a float": ([*FIT, "--model.optim.lr", "fast"], ["model.optim.lr", "'fast'", "not a number"]),
    "word for a bool": (
        [*FIT, "--trainer.enable_progress_bar", "maybe"], ["trainer.enable_progress_bar", "'maybe'", "true or false"]),
    "misspelt data class": ([*FIT, "--data", "TextDataModul"], ["did you mean 'TextDataModule'?"]),
    "misspelt preset": (
        [*FIT, "--model.config", "llama-tiyn"],
        ["model.config", "'llama-tiyn'", "did you mean 'llama-tiny'?", "presets:", "gpt2-tiny"]),
    "misspelt class": ([*FIT, "--model", "CasualLM"], ["did you mean 'CausalLM'?", "classes:", "MaskedLM"]),
    "unknown precision": (
        [*FIT, "--trainer.precision", "8-mixed"], ["trainer.precision", "'8-mixed'", "bf16-mixed", "32-true"]),
    "negative max_steps": ([*FIT, "--trainer.max_steps", "-5"], ["trainer.max_steps -5", "-1 for no limit"]),
    "zero accumulation": ([*FIT, "--trainer.accumulate_grad_batches", "0"],
                          ["trainer.accumulate_grad_batches 0", "1 or more"]),
    "missing checkpoint": ([*FIT, "--ckpt_path", "nonexistent.ckpt"], ["--ckpt_path 'nonexistent.ckpt' does not exist",
                                                                       "'last'"]),
    "misspelt strategy": (
        [*FIT, "--trainer.strategy", "fdsp"], ["trainer.strategy 'fdsp'", "did you mean 'fsdp'?", "ddp", "deepspeed"]),
    "gpu without a GPU": (
        [*FIT, "--trainer.accelerator", "gpu"], ["no GPU found", "use --trainer.accelerator cpu"]),
    "cuda without a GPU": (
        [*FIT, "--trainer.accelerator", "cuda"], ["no GPU found", "use --trainer.accelerator cpu"]),
    "two GPUs without a GPU": (
        [*FIT, "--trainer.accelerator", "gpu", "--trainer.devices", "2"], ["no GPU found"]),
    "a plain state dict as ckpt_path": (
        [*FIT, "--ckpt_path", "{plain}"], ["other.pt", "not a Lightning checkpoint", "llm-modules fit"]),
    "estimate: unknown GPU": (
        ["estimate", "--preset", "llama-tiny", "--gpu", "h1000"],
        ["--gpu 'h1000'", "did you mean 'h100'?", "A100", "H100 SXM"]),
    "generate: prompt longer than the context": (
        ["generate", "{ckpt}", "--prompt-ids", " ".join(["5"] * 17)],
        ["the prompt is 17 tokens", "max_seq_len 16", "refused, not cut"]),
}
GPU_CASES = {"gpu without a GPU", "cuda without a GPU", "two GPUs without a GPU"}

@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line_exit_2(name, files, tmp_path, monkeypatch, capsys):
    if name in GPU_CASES and torch.cuda.is_available():
        pytest.skip("the machine has a GPU")
    monkeypatch.chdir(tmp_path)
    argv, fragments = CASES[name]
    argv = [a.format(**files) for a in argv]
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 2, f"exit {code}:\n{err[-3000:]}"
    assert "Traceback" not in out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"llm-modules {argv[0]}: error: ")
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"

def test_data_longer_than_the_context_is_refused_for_rope(files, tmp_path, monkeypatch, capsys):
    """RoPE would run past max_seq_len silently; the data module meeting the model refuses it, as
    ``estimate --seq-len`` does (one shared check)."""
    monkeypatch.chdir(tmp_path)
    assert main(["fit", "--config", str(files["base"]), "--data.seq_len", "128"]) == 2
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert errors == ["llm-modules fit: error: data.seq_len 128 exceeds the model's max_seq_len 64; "
                      "lower data.seq_len or raise model.config.max_seq_len"]
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").rglob("*.ckpt"))

def test_help_and_print_config_still_work(files, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["fit", "--config", str(files["base"]), "--print_config"]) == 0
    assert "max_steps: 2" in capsys.readouterr().out
    assert main(["fit", "--help"]) == 0
    assert "--trainer.max_steps" in capsys.readouterr().out
