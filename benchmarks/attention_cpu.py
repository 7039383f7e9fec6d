"""Causal fp32 attention on a CPU: ``nn.blocked_attention`` against torch's fused kernel.

    python benchmarks/attention_cpu.py                            # cpu-llama's shape and a sweep of lengths
    python benchmarks/attention_cpu.py --shape 8x6x256x64 --rounds 9 --json attention_cpu.json

Each shape is (batch x heads x length x head dim), with ``/KV`` after it for grouped-query attention with
KV key/value heads (``8x8x256x64/2``: four query heads per key/value head; torch's kernel then runs
with ``enable_gqa``, as the model calls it). q, k and v are views of (B, T, H, D) tensors, as the
attention module's projections give them, and the output is read back in that layout, as the output
projection reads it; so the copies each kernel needs are in the time. What is timed is forward and
backward (and the forward alone), each side best of ``--rounds`` in alternation, with the same thread
count; the speed-up is torch's time over ours. Lengths outside ``blocked_attention.MIN_LEN`` to
``MAX_LEN`` are marked: the model sends them to torch's kernel.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from llm_modules.nn import blocked_attention  # noqa: E402

SHAPES = ["8x6x256x64", "8x6x64x64", "8x6x128x64", "4x6x512x64", "4x8x256x128", "1x6x256x64", "2x6x1024x64",
          "8x8x256x64/2", "8x6x256x64/2", "4x8x512x64/2"]


def parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", nargs="+", default=SHAPES, help="BxHxTxD, or BxHxTxD/KV with KV key/value heads")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    return parser.parse_args(argv)


def best_seconds(fn, rounds: int) -> float:
    fn()
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def measure(shape: str, rounds: int) -> dict:
    sizes, _, kv = shape.partition("/")
    batch, heads, length, dim = (int(n) for n in sizes.split("x"))
    kv_heads = int(kv) if kv else heads
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(batch, length, h, dim, generator=gen).transpose(1, 2).requires_grad_()
               for h in (heads, kv_heads, kv_heads))
    grad = torch.randn(batch, length, heads * dim, generator=gen)
    scale = dim ** -0.5

    def ours():
        return blocked_attention.causal_attention(q, k, v, scale)

    def torchs():
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=kv_heads != heads)

    def step(attend):
        def run():
            out = attend().transpose(1, 2).flatten(2)
            torch.autograd.backward(out, grad)
            q.grad = k.grad = v.grad = None
        return run

    def forward(attend):
        def run():
            with torch.no_grad():
                attend().transpose(1, 2).flatten(2)
        return run

    served = blocked_attention.serves(q, k, v)
    times = {"step": [float("inf")] * 2, "forward": [float("inf")] * 2}
    for _ in range(2):  # alternate, so that a drifting machine slows both alike
        for what, wrap in (("step", step), ("forward", forward)):
            for side, attend in enumerate((torchs, ours)):
                times[what][side] = min(times[what][side], best_seconds(wrap(attend), max(rounds // 2, 1)))
    return {
        "shape": shape, "served": served,
        **{f"{what}_ms": {"torch": t[0] * 1e3, "ours": t[1] * 1e3, "speedup": t[0] / t[1]} for what, t in times.items()},
    }


def main(argv=None) -> list[dict]:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    rows = []
    print(f"causal fp32 attention, {args.threads} threads, best of {args.rounds} rounds (ms)")
    print(f"{'B x H x T x D/KV':16s} {'fwd+bwd torch':>14s} {'ours':>8s} {'speed-up':>9s}   {'fwd torch':>10s} {'ours':>8s}")
    for shape in args.shape:
        row = measure(shape, args.rounds)
        rows.append(row)
        step, fwd = row["step_ms"], row["forward_ms"]
        note = "" if row["served"] else "   (outside MIN_LEN..MAX_LEN: the model takes torch's kernel)"
        print(f"{shape:16s} {step['torch']:14.2f} {step['ours']:8.2f} {step['speedup']:8.2f}x   "
              f"{fwd['torch']:10.2f} {fwd['ours']:8.2f}{note}", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"threads": args.threads, "rounds": args.rounds, "rows": rows}, indent=2))
    return rows


if __name__ == "__main__":
    main()
