"""Peak memory of loading a bf16 Hugging Face checkpoint: ``llm_modules.from_hf`` against transformers.

    python benchmarks/load_memory.py                      # a random Llama-3.2-1B-shaped bf16 checkpoint (2.5 GB)
    python benchmarks/load_memory.py --folder /tmp/ck1b   # keep (or reuse) the checkpoint there
    python benchmarks/load_memory.py --size tiny          # seconds: what the test runs

The checkpoint is created locally: the LLaMA shape of Llama-3.2-1B (vocab 128256, d_model 2048, 16
layers, 32 heads, 8 KV heads, d_ff 8192, tied embeddings: 1.24 B parameters), random bf16 weights,
written by ``to_hf`` as one ``model.safetensors`` (``--max-shard-size`` to shard it), built on the
meta device and filled tensor by tensor, so making it holds one copy.

Each load runs in a fresh subprocess, which reports its resident set after its imports (``base``),
its peak resident set (VmHWM) right after loading (``load``), and again after a forward pass of one
token (``forward``): memory-mapped weights are only read when used, so the second figure is the one
that counts every weight in memory. Ratios are peaks over the checkpoint's file size, with and
without the import baseline (torch, Lightning or transformers themselves: not the checkpoint's).

- ours: ``llm_modules.from_hf(folder)`` (dtype ``auto``: bf16 as stored)
- transformers: ``AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16)``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

SIZES = {
    "1b": dict(vocab_size=128256, d_model=2048, n_layers=16, n_heads=32, n_kv_heads=8, d_ff=8192, max_seq_len=2048),
    "tiny": dict(vocab_size=512, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=128, max_seq_len=64),
}
LOADERS = ("ours", "transformers")


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=SIZES, default="1b")
    parser.add_argument("--folder", type=Path, default=None,
                        help="where the checkpoint is (made there when missing; default: a temporary folder)")
    parser.add_argument("--max-shard-size", default=None, help="shard the checkpoint (e.g. 1GB); default one file")
    parser.add_argument("--loaders", nargs="+", choices=LOADERS, default=list(LOADERS))
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--child", nargs=2, metavar=("LOADER", "FOLDER"), default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def make_checkpoint(folder: Path, size: str, max_shard_size: str | None) -> None:
    """A random bf16 LLaMA checkpoint of ``SIZES[size]``, written by ``to_hf`` (one copy in memory)."""
    import torch

    from llm_modules import CausalLM, ModelConfig
    from llm_modules.empty_init import assign, parameters_on_meta
    from llm_modules.interop import to_hf

    config = ModelConfig.from_preset("llama-tiny").replace(**SIZES[size], tie_embeddings=True)
    with parameters_on_meta():
        module = CausalLM(config)
    generator = torch.Generator().manual_seed(0)
    made: dict[int, torch.Tensor] = {}  # a tied head is the embedding's tensor
    state = {}
    for name, param in module.model.named_parameters(remove_duplicate=False):
        if id(param) not in made:
            tensor = torch.empty(param.shape, dtype=torch.bfloat16)
            made[id(param)] = tensor.fill_(1.0) if param.ndim == 1 else tensor.normal_(0.0, 0.02, generator=generator)
        state[name] = made[id(param)]
    assign(module.model, state, str(folder))
    to_hf(module, folder, **({"max_shard_size": max_shard_size} if max_shard_size else {}))


def child(loader: str, folder: str) -> dict:
    """One measurement, in this (fresh) process."""
    import torch

    if loader == "ours":
        import llm_modules.hf  # noqa: F401  (the import is the baseline, not the load)

        load = lambda: llm_modules.hf.from_hf(folder)  # noqa: E731
    else:
        import transformers

        load = lambda: transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16)  # noqa: E731
    base = status_kib("VmRSS")
    model = load().eval()
    loaded = status_kib("VmHWM")
    with torch.no_grad():
        out = model(torch.ones(1, 1, dtype=torch.long))
    logits = getattr(out, "logits", out)
    dtypes = sorted({str(p.dtype).removeprefix("torch.") for p in model.parameters()})
    return {"loader": loader, "base_kib": base, "load_kib": loaded, "forward_kib": status_kib("VmHWM"),
            "dtypes": dtypes, "finite": bool(torch.isfinite(logits).all())}


def measure(loader: str, folder: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    run = subprocess.run([sys.executable, __file__, "--child", loader, str(folder)], capture_output=True, text=True,
                         timeout=1800, env=env)
    if run.returncode != 0:
        raise RuntimeError(f"{loader} failed:\n{run.stderr[-3000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def file_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))


def report(results: list[dict], size: int) -> list[str]:
    gib = 2**30
    lines = [f"checkpoint: {size / gib:.2f} GiB of safetensors"]
    for r in results:
        base, load, forward = (r[k] * 1024 for k in ("base_kib", "load_kib", "forward_kib"))
        lines.append(
            f"{r['loader']:>12}: imports {base / gib:.2f} GiB; peak after load {load / gib:.2f} GiB "
            f"({load / size:.2f}x file, {(load - base) / size:.2f}x above imports); peak after a forward "
            f"{forward / gib:.2f} GiB ({forward / size:.2f}x file, {(forward - base) / size:.2f}x above imports); "
            f"weights {'/'.join(r['dtypes'])}, logits {'finite' if r['finite'] else 'NOT finite'}")
    return lines


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse(argv)
    if args.child:
        print(json.dumps(child(*args.child)))
        return []
    with tempfile.TemporaryDirectory(prefix="load-memory-") as scratch:
        folder = args.folder or Path(scratch) / "ckpt"
        if not (folder / "config.json").is_file():
            make_checkpoint(folder, args.size, args.max_shard_size)
        size = file_bytes(folder)
        results = [measure(loader, folder) for loader in args.loaders]
        for line in report(results, size):
            print(line)
        if args.json:
            args.json.write_text(json.dumps({"file_bytes": size, "results": results}, indent=2) + "\n")
        return results


if __name__ == "__main__":
    main()
