"""Peak memory of a real training run against ``llm_modules.estimate``'s prediction.

    python benchmarks/memory.py                                   # LLaMA-style d512 x 4 layers, 8 x 256 tokens
    python benchmarks/memory.py --precision 32-true bf16-true --checkpointing both
    python benchmarks/memory.py --preset llama-tiny --batch-size 4 --seq-len 64 --json out.json

Each run is ``--steps`` optimizer steps of ``CausalLM`` with Lightning's Trainer on random tokens
(the second step is the steady state: AdamW's moments exist), in a
fresh subprocess per measurement, measured two ways:

- allocator: ``torch.profiler(profile_memory=True)`` records every allocation with the CPU
  allocator's running total of live tensor bytes; the largest total is the tensor peak, which is
  what the estimate predicts. On CUDA, ``torch.cuda.max_memory_allocated``.
- RSS (CPU only): the process's peak resident set (``ru_maxrss``) minus its resident set before the
  model is built, no profiler. It also counts what glibc's malloc keeps of freed memory (tensors
  under its mmap threshold, up to 32 MB, come from heaps it rarely returns), so it reads higher;
  ``rss-mmap`` repeats it with ``MALLOC_MMAP_THRESHOLD_=131072 MALLOC_ARENA_MAX=1`` (freed
  tensors go straight back to the system), which shows how much of the gap is that retention.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

MODEL = {"vocab_size": 8192, "d_model": 512, "n_layers": 4, "n_heads": 8, "norm": "rmsnorm", "activation": "swiglu",
             "position": "rope", "attention": "sdpa", "bias": False, "tie_embeddings": False}


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default=None, help="a model preset (default: a LLaMA-style d_model 512 x 4 layers)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--steps", type=int, default=2, help="optimizer steps (2: the first steady-state step)")
    parser.add_argument("--precision", nargs="+", default=["32-true"], help="one or more trainer.precision flags")
    parser.add_argument("--checkpointing", choices=("off", "on", "both"), default="both",
                        help="activation checkpointing of every block")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)  # one measurement, as JSON
    return parser.parse_args(argv)


def model_config(args):
    from llm_modules import ModelConfig

    if args.preset:
        return ModelConfig.from_preset(args.preset, max_seq_len=max(args.seq_len, 1))
    return ModelConfig(**MODEL, max_seq_len=args.seq_len)


def rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def fit(args, precision: str, checkpointing: bool) -> None:
    import warnings

    import lightning as L
    import torch

    from llm_modules import CausalLM

    cfg = model_config(args)
    rows = [{"input_ids": torch.randint(0, cfg.vocab_size, (args.seq_len,), generator=torch.Generator().manual_seed(i))}
            for i in range(args.batch_size * args.steps)]
    lm = CausalLM(cfg, memory={"activation_checkpointing": checkpointing})
    trainer = L.Trainer(accelerator="gpu" if args.device == "cuda" else "cpu", devices=1, max_steps=args.steps,
                        precision=precision, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(lm, torch.utils.data.DataLoader(rows, batch_size=args.batch_size))


def child(args) -> dict:
    """One measurement in this (fresh) process: ``precision,checkpointing,method``."""
    import torch

    precision, checkpointing, method = args.child.split(",")
    on = checkpointing == "on"
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        fit(args, precision, on)
        return {"measured": torch.cuda.max_memory_allocated()}
    if method == "allocator":
        from llm_modules.training.peak_memory import cpu_peak_allocated

        return {"measured": cpu_peak_allocated(lambda: fit(args, precision, on))}
    import lightning  # noqa: F401  (the libraries' own memory is baseline, not the run's)

    import llm_modules  # noqa: F401

    before = rss_bytes()
    fit(args, precision, on)
    return {"measured": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before}  # rss, rss-mmap


def estimate(args, precision: str, checkpointing: bool) -> dict:
    from llm_modules.estimate.memory import Setup, estimate_memory
    from llm_modules.estimate.params import count

    cfg = model_config(args)
    setup = Setup(precision=precision, batch_size=args.batch_size, seq_len=args.seq_len,
                  activation_checkpointing=checkpointing, device=args.device)
    result = estimate_memory(cfg, "causal", count(cfg), setup)
    return {"estimate": result.peak, "phase": result.peak_phase, "model_states": result.model_states,
            "activations": result.activations}


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.child:
        print(json.dumps(child(args)))
        return 0
    forwarded = [a for a in (argv if argv is not None else sys.argv[1:]) if a not in ("--json",)]
    if args.json:
        forwarded = [a for a in forwarded if a != str(args.json)]
    methods = ["allocator"] if args.device == "cuda" else ["allocator", "rss", "rss-mmap"]
    modes = {"off": [False], "on": [True], "both": [False, True]}[args.checkpointing]
    results = []
    print(f"{'precision':<11} {'ckpt':<5} {'estimate MB':>12} {'method':<10} {'measured MB':>12} {'est/meas':>9}")
    for precision in args.precision:
        for checkpointing in modes:
            row = {"precision": precision, "checkpointing": checkpointing, **estimate(args, precision, checkpointing)}
            for method in methods:
                spec = f"{precision},{'on' if checkpointing else 'off'},{method}"
                env = dict(os.environ)
                if method == "rss-mmap":
                    env.update(MALLOC_MMAP_THRESHOLD_="131072", MALLOC_ARENA_MAX="1")
                out = subprocess.run([sys.executable, __file__, *forwarded, "--child", spec], capture_output=True,
                                     text=True, check=True, env=env)
                measured = json.loads(out.stdout.strip().splitlines()[-1])["measured"]
                row[method] = measured
                print(f"{precision:<11} {'on' if checkpointing else 'off':<5} {row['estimate'] / 1e6:>12.1f} "
                      f"{method:<10} {measured / 1e6:>12.1f} {row['estimate'] / measured:>9.3f}", flush=True)
            results.append(row)
    if args.json:
        args.json.write_text(json.dumps({"args": {k: v for k, v in vars(args).items() if k not in ("json", "child")},
                                         "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
