"""Shared by the fine-tuning tests: a small trained base checkpoint, made once per test session.

The base is a LLaMA-shaped CausalLM (so it exports to Hugging Face) with its own SentencePiece
tokenizer, trained for a few dozen steps on plain text made of the words, letters and numbers the
tiny instruction set uses (``tests/data/instructions/tiny.jsonl``), but never in its
instruction/response layout: the base knows the vocabulary, and fine-tuning has the task to learn.
Training is a plain torch loop (seconds), saved with ``save_checkpoint`` like any llm-modules run.
The ``base`` fixture builds it once for all test files, also across pytest-xdist workers (a file
lock in the session's shared temporary folder): it is deterministic, so whoever builds it first
builds the one every test reads, and nothing writes to it afterwards.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from filelock import FileLock

from llm_modules import CausalLM, ModelConfig
from llm_modules.checkpoint import save_checkpoint
from llm_modules.data.tokenizer import Tokenizer

from _fit_helpers import REPO, SNIPPETS

INSTRUCTIONS = REPO / "tests" / "data" / "instructions" / "tiny.jsonl"
WORDS = ["red", "blue", "green", "cat", "dog", "sun", "moon", "tree", "fish", "bird", "star", "rock"]

#: 2 blocks of d_model 128: big enough that a rank-4 LoRA on q and v is 1% of the weights, small
#: enough to train in seconds on one CPU thread
BASE_CONFIG = dict(
    vocab_size=384, d_model=128, n_layers=2, n_heads=4, n_kv_heads=4, d_ff=256, norm="rmsnorm",
    activation="swiglu", position="rope", attention="sdpa", bias=False, tie_embeddings=False, max_seq_len=128,
    norm_eps=1e-6,
)


@dataclass
class Base:
    checkpoint: Path
    tokenizer: Path
    config: ModelConfig


def base_text(rng: random.Random, lines: int = 600) -> list[str]:
    """Sentences over the instruction set's words, counting, letter runs and a little code."""
    out = []
    for i in range(lines):
        kind = i % 4
        if kind == 0:
            out.append(f"The {rng.choice(WORDS)} and the {rng.choice(WORDS)} see a {rng.choice(WORDS).upper()}.")
        elif kind == 1:
            n = rng.randrange(0, 95)
            out.append(" ".join(str(n + k) for k in range(5)))
        elif kind == 2:
            out.append("".join(rng.sample("abcdefgh", 5)) + " " + " ".join(rng.sample(WORDS, 3)))
        else:
            out.append(rng.choice(SNIPPETS).strip())
    return out


@pytest.fixture(scope="session")
def base(tmp_path_factory) -> Base:
    # Under xdist each worker's base folder sits in the session's folder, which they share;
    # without xdist the session's own folder (its parent holds earlier sessions' folders).
    basetemp = tmp_path_factory.getbasetemp()
    shared = basetemp.parent if os.environ.get("PYTEST_XDIST_WORKER") else basetemp
    folder = shared / "finetune-base"
    with FileLock(str(shared / "finetune-base.lock")):
        if (folder / "base.ckpt").is_file():
            return Base(folder / "base.ckpt", folder / "tok.model", _config(Tokenizer.load(folder / "tok.model")))
        return make_base(folder)


def _config(tok: Tokenizer) -> ModelConfig:
    return ModelConfig(**BASE_CONFIG, bos_token_id=tok.bos_id, eos_token_id=tok.eos_id)


def make_base(folder: Path, steps: int = 60, seed: int = 0) -> Base:
    """Train the tokenizer and the base model; write ``base.ckpt`` and ``tok.model`` in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    texts = base_text(rng)
    instructions = INSTRUCTIONS.read_text(encoding="utf-8")  # the pieces of the task words, not the tasks
    tok = Tokenizer.train(iter(texts + [instructions]), folder / "tok.model", vocab_size=BASE_CONFIG["vocab_size"],
                          num_sentinels=8)
    config = _config(tok)
    torch.manual_seed(seed)
    lm = CausalLM(config)
    stream = torch.tensor([t for text in texts for t in tok.encode(text + "\n") + [tok.eos_id]])
    optimizer = torch.optim.AdamW(lm.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(seed)
    block = 64
    for _ in range(steps):
        starts = torch.randint(0, len(stream) - block - 1, (8,), generator=generator)
        batch = torch.stack([stream[s : s + block] for s in starts.tolist()])
        loss = lm.compute_loss({"input_ids": batch})["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    lm.tokenizer_bytes = tok.to_bytes()
    path = save_checkpoint(lm, folder / "base.ckpt")
    return Base(path, folder / "tok.model", config)
