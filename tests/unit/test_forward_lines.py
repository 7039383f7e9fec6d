"""The CausalLM training forward stays short to read: ``benchmarks/forward_lines.py`` traces one
training step of the quickstart architecture and counts the lines of nn/ + models/ it runs."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_one_causal_lm_training_step_reads_under_800_lines():
    spec = importlib.util.spec_from_file_location("forward_lines", ROOT / "benchmarks" / "forward_lines.py")
    forward_lines = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(forward_lines)
    lines, functions = forward_lines.measure()
    names = {name for listed in functions.values() for name, _, _ in listed}
    # the trace sees the step: the loss, the model's forward, every layer's pieces, the backward
    assert {"LanguageModel.compute_loss", "DecoderLM.forward", "Block.forward", "Attention.forward"} <= names
    assert any(name.endswith(".backward") for name in names)
    total = sum(len(v) for v in lines.values())
    assert 200 < total < 800, {path: len(v) for path, v in lines.items()}
