"""Quantized models against the float one: size on disk, held-out perplexity, generation tokens/s.

    python benchmarks/quantize.py runs/llm/version_0/checkpoints/last.ckpt
    python benchmarks/quantize.py CKPT --blocks 512 --new-tokens 128 --threads 2 --json quantize.json

For the float model and each method (``dynamic-int8``, ``int8-weight``, ``int4-weight``):
- size: the file ``save_checkpoint`` / ``save_quantized`` writes (weights and plain data only; a
  Trainer's ``last.ckpt`` also holds optimizer state, so its own size is shown apart);
- perplexity on the first ``--blocks`` held-out (validation) blocks of ``--data`` (default
  python-stdlib), split exactly as training split it (same seed, val_fraction, seq_len), tokenized
  with the checkpoint's own tokenizer (no tokenizer is trained), and its change against float;
- scoring tokens/s: forward passes over ``--timing-batches`` held-out batches of ``--batch-size`` x
  ``--seq-len`` (large matmuls, where an integer matmul pays off);
- greedy generation tokens/s, batch 1, ``--new-tokens`` tokens after a short prompt, EOS off so
  every run generates the same count (small matmuls: per-call overheads count).
Both with ``--threads`` intra-op threads, best of ``--repeats`` rounds after a warm-up (the best
round is the one least disturbed by other processes on the machine).
Quantized models are measured as loaded back from their files, so the figures are the files'.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

METHODS = ("dynamic-int8", "int8-weight", "int4-weight")


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("ckpt", type=Path, help="float checkpoint (e.g. the quickstart's last.ckpt)")
    parser.add_argument("--data", default="python-stdlib", help="data path(s) of the run, comma-separated")
    parser.add_argument("--seq-len", type=int, default=128, help="data.seq_len of the run")
    parser.add_argument("--val-fraction", type=float, default=0.05, help="data.val_fraction of the run")
    parser.add_argument("--seed", type=int, default=1234, help="data.seed of the run")
    parser.add_argument("--blocks", type=int, default=256, help="held-out blocks to score (0: all)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated quantization methods")
    parser.add_argument("--group-size", default="64", help="int4-weight group size(s), comma-separated: a row each")
    parser.add_argument("--prompt", default="def main():\n    ", help="generation prompt")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5, help="timing rounds (the best round counts)")
    parser.add_argument("--timing-batches", type=int, default=4, help="held-out batches timed for scoring speed")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--out-dir", type=Path, default=None, help="where the checkpoints go (default: a temp folder)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here as JSON")
    return parser.parse_args(argv)


def held_out_batches(module, args: argparse.Namespace, folder: Path) -> list[dict[str, torch.Tensor]]:
    """The first ``--blocks`` validation blocks, batched, with the checkpoint's own tokenizer."""
    from llm_modules.data import TextDataModule

    if module.tokenizer_bytes is None:
        sys.exit(f"{args.ckpt}: the checkpoint carries no tokenizer; it was not trained through a data module")
    tokenizer_file = folder / "tokenizer.model"
    tokenizer_file.write_bytes(module.tokenizer_bytes)
    data = TextDataModule(
        paths=args.data.split(","), tokenizer=str(tokenizer_file), train_tokenizer=False, seq_len=args.seq_len,
        batch_size=args.batch_size, val_fraction=args.val_fraction, seed=args.seed,
    )
    data.setup("validate")
    batches, blocks = [], 0
    for batch in data.val_dataloader():
        batches.append(batch)
        blocks += batch["input_ids"].shape[0]
        if args.blocks and blocks >= args.blocks:
            break
    return batches


@torch.no_grad()
def perplexity(module, batches) -> tuple[float, int]:
    """exp(mean token cross-entropy) over all target tokens of ``batches``, and the token count."""
    total = tokens = 0.0
    for batch in batches:
        out = module.compute_loss(batch)
        n = float(out["tokens"])
        total += float(out["lm_loss"]) * n
        tokens += n
    return math.exp(total / tokens), int(tokens)


@torch.no_grad()
def time_scoring(module, batches) -> float:
    """Seconds for one forward pass over ``batches``."""
    start = time.perf_counter()
    for batch in batches:
        module(batch["input_ids"])
    return time.perf_counter() - start


def time_generation(module, prompt: torch.Tensor, new_tokens: int) -> float:
    """Seconds for one greedy generation of exactly ``new_tokens`` tokens (EOS off)."""
    start = time.perf_counter()
    out = module.generate(prompt, max_new_tokens=new_tokens, eos_token_id=[])
    elapsed = time.perf_counter() - start
    assert out.shape[1] == prompt.shape[1] + new_tokens
    return elapsed


def run(args: argparse.Namespace) -> dict:
    from llm_modules.checkpoint import load_checkpoint, save_checkpoint
    from llm_modules.quantization import linear_bytes, load_quantized, quantizable_linears, quantize, save_quantized

    torch.set_num_threads(args.threads)
    folder = args.out_dir or Path(tempfile.mkdtemp(prefix="llm-quantize-"))
    folder.mkdir(parents=True, exist_ok=True)
    base = load_checkpoint(args.ckpt)
    batches = held_out_batches(base, args, folder)
    prompt = torch.tensor([base.tokenizer.encode(args.prompt, bos=base.tokenizer.bos_id >= 0)])
    if prompt.shape[1] + args.new_tokens > base.config.max_seq_len:
        sys.exit(f"--new-tokens {args.new_tokens} + the prompt's {prompt.shape[1]} tokens exceed the model's "
                 f"max_seq_len {base.config.max_seq_len}")

    variants = [("float32", {})]
    for name in (m.strip() for m in args.methods.split(",") if m.strip()):
        if name == "int4-weight":
            variants += [(name, {"group_size": int(g)}) for g in str(args.group_size).split(",")]
        else:
            variants.append((name, {}))
    rows, modules = [], []
    for name, options in variants:
        label = f"{name} (g{options['group_size']})" if options else name
        if name == "float32":
            path = save_checkpoint(base, folder / "float32.ckpt")
            module = load_checkpoint(path)
            linear = sum(module.model.get_submodule(n).weight.nbytes for n in quantizable_linears(module.model))
        else:
            file = folder / (f"{name}-g{options['group_size']}.ckpt" if options else f"{name}.ckpt")
            path = save_quantized(quantize(load_checkpoint(args.ckpt), name, **options), file)
            module = load_quantized(path)
            linear = linear_bytes(module)[0]
        ppl, tokens = perplexity(module, batches)
        rows.append({"method": label, "size_mb": os.path.getsize(path) / 1e6, "linear_mb": linear / 1e6, "ppl": ppl,
                     "file": str(path)})
        modules.append(module)
        print(f"  {label}: {rows[-1]['size_mb']:.2f} MB, perplexity {ppl:.3f}", file=sys.stderr, flush=True)

    # Timings in rounds, every model once per round, best round kept: a burst of load from other
    # processes then slows one round of all models rather than all rounds of one.
    timed = batches[: args.timing_batches]
    scored = sum(b["input_ids"].numel() for b in timed)
    for module in modules:  # warm-up
        time_generation(module, prompt, 8)
        time_scoring(module, timed[:1])
    best_generation = [math.inf] * len(modules)
    best_scoring = [math.inf] * len(modules)
    for _ in range(args.repeats):
        for i, module in enumerate(modules):
            best_generation[i] = min(best_generation[i], time_generation(module, prompt, args.new_tokens))
            best_scoring[i] = min(best_scoring[i], time_scoring(module, timed))
    for row, generation, scoring in zip(rows, best_generation, best_scoring):
        row["tokens_per_s"] = args.new_tokens / generation
        row["scoring_tokens_per_s"] = scored / scoring
    float_row = rows[0]
    for row in rows:
        row["ppl_change_pct"] = 100 * (row["ppl"] / float_row["ppl"] - 1)
        row["size_ratio"] = row["size_mb"] / float_row["size_mb"]
        row["linear_ratio"] = row["linear_mb"] / float_row["linear_mb"]
        row["speed_ratio"] = row["tokens_per_s"] / float_row["tokens_per_s"]
    return {
        "checkpoint": str(args.ckpt),
        "checkpoint_mb": os.path.getsize(args.ckpt) / 1e6,
        "parameters": base.num_parameters(),
        "data": args.data, "held_out_blocks": sum(b["input_ids"].shape[0] for b in batches),
        "held_out_tokens": tokens, "seq_len": args.seq_len, "batch_size": args.batch_size,
        "timing_batches": len(timed), "repeats": args.repeats,
        "new_tokens": args.new_tokens, "prompt_tokens": prompt.shape[1], "threads": args.threads,
        "torch": torch.__version__, "quantized_engine": torch.backends.quantized.engine,
        "rows": rows,
    }


def report(results: dict) -> str:
    width = max(len(r["method"]) for r in results["rows"])
    lines = [
        f"{results['checkpoint']} ({results['parameters']:,} parameters; the file itself, with optimizer "
        f"state: {results['checkpoint_mb']:.1f} MB)",
        f"perplexity: {results['held_out_blocks']} held-out blocks of {results['data']} "
        f"({results['held_out_tokens']:,} tokens); scoring: {results['timing_batches']} batches of "
        f"{results['batch_size']}x{results['seq_len']}; generation: greedy, batch 1, {results['new_tokens']} new tokens; "
        f"{results['threads']} threads, best of {results['repeats']} rounds; torch {results['torch']} "
        f"({results['quantized_engine']} engine)",
        "",
        f"| {'method':<{width}} |      file (MB) | linear weights (MB) | perplexity | ppl change | scoring tok/s "
        "| generation tok/s | gen. vs float |",
        f"|{'-' * (width + 2)}|---------------:|--------------------:|-----------:|-----------:|--------------:"
        "|-----------------:|--------------:|",
    ]
    for r in results["rows"]:
        file_cell = f"{r['size_mb']:.2f} ({r['size_ratio']:.1%})"
        linear_cell = f"{r['linear_mb']:.2f} ({r['linear_ratio']:.1%})"
        lines.append(
            f"| {r['method']:<{width}} | {file_cell:>14} | {linear_cell:>19} | {r['ppl']:10.3f} | "
            f"{r['ppl_change_pct']:+9.2f}% | {r['scoring_tokens_per_s']:13.0f} | {r['tokens_per_s']:16.1f} | "
            f"{r['speed_ratio']:13.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    results = run(args)
    print(report(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
