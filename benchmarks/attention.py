"""Forward+backward throughput of the attention backends: sdpa, flex, flash_attn, xformers.

    python benchmarks/attention.py                                 # seq 2048 and 8192, causal, bf16
    python benchmarks/attention.py --documents 4                   # packed blocks of 4 documents each
    python benchmarks/attention.py --seq-lens 256 --batch 1 --heads 2 --device cpu   # a CPU smoke run
    python benchmarks/attention.py --json attention.json            # also write the figures as JSON

Each backend is the registered one (``ATTENTIONS.build(name)``), called exactly as a model calls it,
on random bf16 q/k/v of shape (batch, heads, seq, head_dim) with ``--kv-heads`` key/value heads.
A backend that cannot run here (no CUDA, package missing, no backward on this device) is listed
with the reason instead of a figure (``skipped``); one that accepts the setup and then fails
(out of memory, a kernel error) is listed with the error (``error``). ``flex`` runs under ``torch.compile`` (unfused it is a
reference implementation, not a kernel); the others run as they do in training.

FLOPs count only the query/key pairs the mask lets through (a causal mask: about half; packed
documents: the sum over documents), 4 * head_dim per pair and head for the two matmuls of the
forward, and 2.5 times that for the backward, the usual FlashAttention accounting.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from llm_modules.nn.masks import AttentionMask
from llm_modules.nn.positions import NoPosition
from llm_modules.registry import ATTENTIONS, ConfigError

BACKENDS = ("sdpa", "flex", "flash_attn", "xformers")


def parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seq-lens", type=int, nargs="+", default=[2048, 8192])
    parser.add_argument("--tokens", type=int, default=16384, help="tokens per batch (batch = tokens // seq), "
                        "unless --batch is given")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--kv-heads", type=int, default=None, help="key/value heads (GQA); default: --heads")
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--bidirectional", action="store_true", help="no causal mask")
    parser.add_argument("--documents", type=int, default=1, help="documents packed into each row (document mask)")
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    return parser.parse_args(argv)


def document_ids(batch: int, seq: int, documents: int, device) -> torch.Tensor | None:
    """Rows of ``documents`` documents of random lengths (seeded); None for one document per row."""
    if documents <= 1:
        return None
    g = torch.Generator().manual_seed(0)
    rows = []
    for _ in range(batch):
        cuts = torch.randperm(seq - 1, generator=g)[: documents - 1].add(1).sort().values
        row = torch.zeros(seq, dtype=torch.long)
        row[cuts] = 1
        rows.append(row.cumsum(0))
    return torch.stack(rows).to(device)


def visible_pairs(seq: int, causal: bool, documents: torch.Tensor | None, batch: int) -> int:
    """Query/key pairs the mask lets through, over the whole batch."""
    lengths = ([torch.bincount(row).tolist() for row in documents.cpu()] if documents is not None
               else [[seq]] * batch)
    return sum(n * (n + 1) // 2 if causal else n * n for row in lengths for n in row)


def timed(fn, warmup: int, iters: int, device) -> float:
    """Seconds per call of ``fn`` (after warm-up), synchronising the device around the timed loop."""
    for _ in range(warmup):
        fn()
    sync = torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    sync()
    return (time.perf_counter() - start) / iters


def run_one(name: str, args, seq: int, batch: int) -> dict:
    """{"ms", "tflops"} of one backend at one size; {"skipped": why} when the backend refuses this
    device or setup (not installed, no CUDA); {"error": what} when it accepted and then failed to
    run (out of memory, a kernel error): a failure to report, not a backend that is absent."""
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    kv_heads = args.kv_heads or args.heads
    causal = not args.bidirectional
    try:
        backend = ATTENTIONS.build(name, head_dim=args.head_dim)
        # no position encoding: the kernels are timed on q/k/v as they are, with no score bias
        backend.check(encoding=NoPosition(), dropout=0.0, needs_masks=not causal,
                      features=frozenset() if causal else frozenset({"bidirectional"}))
    except ConfigError as err:
        return {"skipped": str(err)}
    if device.type == "cpu" and not getattr(backend, "cpu_backward", True):  # declared, like check's refusals
        return {"skipped": f"attention {name!r} has no backward on CPU in this torch; run on a GPU"}
    docs = document_ids(batch, seq, args.documents, device)
    mask = AttentionMask(seq, seq, causal=causal, documents=docs)
    g = torch.Generator(device=device).manual_seed(0)
    q = torch.randn(batch, args.heads, seq, args.head_dim, generator=g, device=device, dtype=dtype)
    k, v = (torch.randn(batch, kv_heads, seq, args.head_dim, generator=g, device=device, dtype=dtype)
            for _ in range(2))
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    grad = torch.randn_like(q)
    scale = 1.0 / math.sqrt(args.head_dim)
    call = (lambda: backend(q, k, v, mask, None, scale))
    if name == "flex":
        call = torch.compile(call)

    def step():
        out = call()
        out.backward(grad)
        q.grad = k.grad = v.grad = None

    try:
        seconds = timed(step, args.warmup, args.iters, device)
    except (RuntimeError, NotImplementedError) as err:
        return {"error": f"{type(err).__name__}: {(str(err).splitlines() or [''])[0]}"}
    flops = 4 * args.head_dim * args.heads * visible_pairs(seq, causal, docs, batch) * 3.5
    return {"ms": seconds * 1e3, "tflops": flops / seconds / 1e12, "flops": flops}


def describe(result: dict) -> str:
    if "skipped" in result or "error" in result:
        return next(f"{key}: {result[key]}" for key in ("skipped", "error") if key in result)
    return f"{result['ms']:9.2f} ms  {result['tflops']:8.3g} TFLOP/s"


def main(argv=None) -> None:
    args = parse(argv)
    device = torch.device(args.device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    mask = "bidirectional" if args.bidirectional else "causal"
    print(f"attention forward+backward on {where}, {args.dtype}, {args.heads} heads "
          f"({args.kv_heads or args.heads} kv) x {args.head_dim}, {mask}, {args.documents} document(s) per row")
    rows = []
    for seq in args.seq_lens:
        batch = args.batch or max(1, args.tokens // seq)
        for name in args.backends:
            result = run_one(name, args, seq, batch)
            rows.append({"backend": name, "seq_len": seq, "batch": batch, **result})
            print(f"  seq {seq:6d}  batch {batch:3d}  {name:<11} {describe(result)}", flush=True)
    if args.json:
        setup = {k: v for k, v in vars(args).items() if k != "json"}
        args.json.write_text(json.dumps({"device": where, "args": setup, "results": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
