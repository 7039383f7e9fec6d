"""Does a freshly initialised model learn at all? The copy task, for every norm x residual x LM kind.

    python benchmarks/copy_task.py                         # every combination the registry allows
    python benchmarks/copy_task.py --norm dyt --residual sandwich --kind MaskedLM
    python benchmarks/copy_task.py --steps 40 --json copy.json

Each row trains a tiny model from its default init to output, at every position, the token it is
given there (targets = inputs; encoder-decoders copy through the decoder with the same ids as
decoder input). The tokens are drawn uniformly from ``--symbols`` of the vocabulary, fresh every
step, so nothing can be memorised: a model that only learns the unigram distribution ends at the
unigram entropy ``ln(symbols)``, one that uses its input goes towards 0. Adam at ``--lr`` for
``--steps`` steps on ``--length`` tokens (the figures of issue 20: 24 tokens, 3e-3, 40 steps).

It exists because some default combinations (``layernorm`` + ``sandwich`` on a MaskedLM, every
combination with the example plugin's ``dyt``) once stopped at the unigram entropy: a default init
that drowns the token signal. ``tests/unit/test_defaults_learn.py`` runs the same function as a contract.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import time

import torch
import torch.nn.functional as F

from llm_modules import ModelConfig
from llm_modules.models import KINDS
from llm_modules.registry import NORMS, RESIDUALS, ConfigError


def tiny_config(norm: str, residual: str, **overrides) -> ModelConfig:
    """The probe's model: 2 layers of width 32, a vocabulary of 64."""
    fields = {"vocab_size": 64, "d_model": 32, "n_heads": 4, "n_layers": 2, "max_seq_len": 32,
              "norm": norm, "residual": residual, "n_encoder_layers": 2, **overrides}
    return ModelConfig(**fields)


def copy_logits(model: torch.nn.Module, kind: str, ids: torch.Tensor) -> torch.Tensor:
    """Logits at every position of ``ids`` for the LM kind's torch model."""
    if kind == "Seq2SeqLM":
        return model(ids, decoder_input_ids=ids)
    if kind == "PrefixLM":  # the first half of each row is a bidirectional prefix
        return model(ids, prefix_lengths=torch.full((ids.shape[0],), ids.shape[1] // 2))
    return model(ids)


def copy_task(
    norm: str, residual: str, kind: str, *, steps: int = 40, lr: float = 3e-3, length: int = 24,
    batch: int = 16, symbols: int = 16, seed: int = 0,
) -> dict[str, float]:
    """Train one combination on the copy task; its first and last losses and the unigram entropy (nats)."""
    torch.manual_seed(seed)
    model = KINDS[kind](tiny_config(norm, residual)).model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    data = torch.Generator().manual_seed(seed + 1)
    losses = []
    for _ in range(steps):
        ids = torch.randint(1, symbols + 1, (batch, length), generator=data)  # 0 is the pad id: left out
        logits = copy_logits(model, kind, ids)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), ids.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return {"first": losses[0], "last": sum(losses[-3:]) / 3, "unigram_entropy": math.log(symbols)}


def combinations(kinds=None, norms=None, residuals=None):
    """Every (norm, residual, kind) the registry builds; pairs a layout refuses are left out."""
    grid = itertools.product(norms or NORMS.names(), residuals or RESIDUALS.names(), kinds or sorted(KINDS))
    for norm, residual, kind in grid:
        try:
            tiny_config(norm, residual)
            KINDS[kind](tiny_config(norm, residual))
        except ConfigError:
            continue
        yield norm, residual, kind


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--norm", action="append")
    parser.add_argument("--residual", action="append")
    parser.add_argument("--kind", action="append", choices=sorted(KINDS))
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    for norm, residual, kind in combinations(args.kind, args.norm, args.residual):
        start = time.perf_counter()
        row = {"norm": norm, "residual": residual, "kind": kind,
               **copy_task(norm, residual, kind, steps=args.steps, lr=args.lr, seed=args.seed)}
        row["seconds"] = time.perf_counter() - start
        rows.append(row)
        flag = "" if row["last"] < row["unigram_entropy"] / 2 else "   <-- stuck near the unigram entropy"
        print(f"{norm:10s} {residual:9s} {kind:10s} {row['first']:.3f} -> {row['last']:.3f} "
              f"(unigram {row['unigram_entropy']:.2f}, {row['seconds']:.1f}s){flag}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
