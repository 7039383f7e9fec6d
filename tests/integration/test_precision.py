"""Every precision a CPU can run trains a tiny model; 16-mixed on CPU is said plainly; FP8 without
its library or GPU is refused naming trainer.precision. (FP8 itself is untested here: no GPU.)"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from llm_modules import CausalLM, ModelConfig
from llm_modules.cli import main
from llm_modules.registry import ConfigError
from llm_modules.training.precision import check_precision

from _fit_helpers import CONFIGS, tiny, write_corpus


@pytest.mark.parametrize("precision", ["32-true", "16-mixed", "bf16-mixed", "bf16-true", "64-true"])
def test_each_precision_trains_a_tiny_model_on_cpu(precision):
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_seq_len=32,
                         norm="rmsnorm", activation="swiglu", position="rope", bias=False)
    lm = CausalLM(config, optim={"lr": 3e-3, "warmup_steps": 0, "max_steps": 4})
    ids = torch.randint(0, 64, (16, 16), generator=torch.Generator().manual_seed(0))
    before = lm.compute_loss({"input_ids": ids[:8]})["loss"].item()
    trainer = L.Trainer(accelerator="cpu", precision=precision, max_steps=4, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    data = [{"input_ids": row} for row in ids[:8]] * 4
    trainer.fit(lm, DataLoader(data, batch_size=8))
    # Lightning turns 16-mixed into bf16 autocast on CPU (the notice below says so).
    assert str(trainer.precision) == ("bf16-mixed" if precision == "16-mixed" else precision)
    if precision in ("bf16-true", "64-true"):
        dtype = torch.bfloat16 if precision == "bf16-true" else torch.float64
        assert lm.model.stack.layers[0].attn.q.weight.dtype == dtype
        assert torch.isfinite(trainer.callback_metrics["train/grad_norm"])  # normed in (at least) the weights' dtype
    after = trainer.callback_metrics["train/loss"]
    assert torch.isfinite(after) and after.item() < before, (before, after.item())


def test_check_precision_says_what_happens_and_refuses_fp8_without_its_gpu(monkeypatch):
    assert check_precision("32-true", "cpu") is None and check_precision("bf16-mixed", "cpu") is None
    for flag in ("16-mixed", "16", 16):
        notice = check_precision(flag, "cpu")
        assert "bf16-mixed instead" in notice and "set trainer.precision: bf16-mixed" in notice
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert check_precision("16-mixed", "auto") is None  # a GPU run keeps fp16 autocast: nothing to say
    with pytest.raises(ConfigError, match=r"trainer\.precision=transformer-engine \(FP8\) needs"):
        check_precision("transformer-engine", "gpu")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus"), files=20)


def test_cli_prints_one_plain_line_for_16_mixed_on_cpu_and_refuses_fp8(corpus, tmp_path, monkeypatch, caplog, capsys):
    monkeypatch.chdir(tmp_path)
    args = tiny(CONFIGS / "quickstart.yaml", corpus, tmp_path / "cache", "--trainer.precision", "16-mixed", steps=2)
    with caplog.at_level(logging.INFO, logger="llm_modules"):
        assert main(["fit", *args]) == 0
    notices = [r.message for r in caplog.records if "16-mixed" in r.message]
    assert len(notices) == 1 and "bf16-mixed" in notices[0] and "silence" in notices[0], notices
    capsys.readouterr()
    code = main(["fit", *tiny(CONFIGS / "quickstart.yaml", corpus, tmp_path / "cache",
                              "--trainer.precision", "transformer-engine", steps=2)])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("llm-modules")]
    assert code == 2 and len(lines) == 1 and "trainer.precision=transformer-engine" in lines[0], err[-2000:]
    assert "transformer-engine[pytorch]" in lines[0] and "Traceback" not in err
