"""Shared by the tests of what commands write (test_no_overwrite, test_output_modes, test_convert_tokenizer):
a tiny real checkpoint that carries its tokenizer, made in well under a second, no training run."""

from __future__ import annotations

from pathlib import Path

import torch

from _fit_helpers import SNIPPETS
from llm_modules import CausalLM, ModelConfig
from llm_modules.checkpoint import save_checkpoint
from llm_modules.data.tokenizer import Tokenizer


def tokenizer() -> Tokenizer:
    """A 300-piece SentencePiece tokenizer trained in memory on the code snippets (about 10 ms)."""
    return Tokenizer.train(iter([s * 3 for s in SNIPPETS] * 5), vocab_size=300, num_sentinels=2)


def checkpoint_with_tokenizer(path: Path, seed: int = 0) -> Path:
    """A one-layer LLaMA-like CausalLM (exportable to Hugging Face) whose checkpoint holds its tokenizer,
    as a fit's checkpoints do."""
    tok = tokenizer()
    config = ModelConfig.from_preset("llama-tiny", vocab_size=tok.vocab_size, d_model=32, n_layers=1, n_heads=4,
                                     max_seq_len=64)
    torch.manual_seed(seed)
    module = CausalLM(config)
    module.tokenizer_bytes = tok.to_bytes()
    return save_checkpoint(module, path)


def lora_checkpoint(path: Path, base: Path) -> Path:
    """An adapter-only LoRA fine-tune of ``base`` (what ``export --format adapter`` takes)."""
    torch.manual_seed(1)
    return save_checkpoint(CausalLM(init_from=str(base), peft={"name": "lora", "r": 2}), path)


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative name -> bytes): equal before and after means untouched."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
