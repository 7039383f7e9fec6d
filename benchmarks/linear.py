"""fp32 linear products on a CPU: torch's ``F.linear`` (MKL) against the model's ``nn.linear.linear``.

    python benchmarks/linear.py                       # cpu-llama's products and a sweep around the cut-over
    python benchmarks/linear.py --shape 2048x384x1024 --rounds 9 --json linear.json

For each (rows x in x out) product it times the forward, the forward and input gradient with a
frozen weight (grad @ weight, as under LoRA) and a whole forward + backward, each side best of
``--rounds`` in alternation, and prints the speed-up. ``nn.linear.MIN_MACS`` (the size from which the model takes oneDNN) is read off the sweep: below
it oneDNN's per-call set-up outweighs its faster kernel. Rows marked ``F.linear`` are products below
that size, which the model leaves to ``F.linear`` (both columns then time the same call).
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

from llm_modules.nn import linear as linear_layer  # noqa: E402

#: cpu-llama (benchmarks/train_step.py): q/k/v/o, gate/up, down and the head, 8 x 256 tokens
CPU_LLAMA = ["2048x384x384", "2048x384x1024", "2048x1024x384", "2048x384x8192"]
#: around the cut-over
SWEEP = ["64x64x64", "256x128x128", "256x256x256", "512x256x256", "1024x256x256", "1024x512x512"]


def parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", action="append", help="ROWSxINxOUT (repeatable; default: cpu-llama's and a sweep)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    return parser.parse_args(argv)


def best_time(fn, budget_s: float = 0.02) -> float:
    """Seconds per call: enough calls to fill ``budget_s``, timed as one batch."""
    fn()
    calls, start = 1, time.perf_counter()
    fn()
    once = max(time.perf_counter() - start, 1e-7)
    calls = max(1, int(budget_s / once))
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def measure(rows: int, d_in: int, d_out: int, rounds: int) -> dict:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(rows, d_in, generator=generator, requires_grad=True)
    weight = torch.randn(d_out, d_in, generator=generator, requires_grad=True)
    grad = torch.randn(rows, d_out, generator=generator)

    def forward(fn):
        def call():
            with torch.no_grad():
                fn(x, weight)
        return call

    frozen = weight.detach()  # a frozen weight: only the input gradient is computed, on both sides

    def input_grad(fn):
        return lambda: torch.autograd.grad(fn(x, frozen), x, grad)

    def both(fn):
        return lambda: torch.autograd.grad(fn(x, weight), (x, weight), grad)

    result = {"shape": f"{rows}x{d_in}x{d_out}", "macs": rows * d_in * d_out,
              "onednn": linear_layer.onednn_serves(x, weight)}
    for part, flops, make in (("forward", 2, forward), ("input_grad", 4, input_grad), ("forward_backward", 6, both)):
        times = {"F.linear": [], "ours": []}
        for _ in range(rounds):
            for name, fn in (("F.linear", F.linear), ("ours", linear_layer.linear)):
                times[name].append(best_time(make(fn)))
        best = {name: min(values) for name, values in times.items()}
        result[part] = {"seconds": best, "gflops": {name: flops * result["macs"] / t / 1e9 for name, t in best.items()},
                        "speedup": best["F.linear"] / best["ours"]}
    return result


def report(results: list[dict]) -> str:
    lines = [f"{'rows x in x out':>16}  {'MACs':>11}  {'path':>8}  "
             f"{'forward GFLOP/s':>21}  {'frozen weight':>15}  {'fwd+bwd':>15}",
             f"{'':>16}  {'':>11}  {'':>8}  {'F.linear/ours (x)':>21}  {'x':>15}  {'x':>15}"]
    for r in results:
        fwd = r["forward"]["gflops"]
        lines.append(f"{r['shape']:>16}  {r['macs']:>11,}  {'oneDNN' if r['onednn'] else 'F.linear':>8}  "
                     f"{fwd['F.linear']:6.1f}/{fwd['ours']:6.1f} ({r['forward']['speedup']:.2f}x)  "
                     f"{r['input_grad']['speedup']:>14.2f}x  {r['forward_backward']['speedup']:>14.2f}x")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    shapes = args.shape or CPU_LLAMA + SWEEP
    results = []
    for shape in shapes:
        rows, d_in, d_out = (int(v) for v in shape.lower().split("x"))
        results.append(measure(rows, d_in, d_out, args.rounds))
    print(f"fp32 linear products, {args.threads} threads, best of {args.rounds} rounds; "
          f"the model takes oneDNN from {linear_layer.MIN_MACS:,} multiply-adds")
    print(report(results))
    if args.json:
        args.json.write_text(json.dumps({"threads": args.threads, "min_macs": linear_layer.MIN_MACS,
                                         "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
