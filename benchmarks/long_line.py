"""Peak memory of ``fit`` on one file that is a single very long line (no newline at all).

    python benchmarks/long_line.py                      # 200 MB line, the whole fit (tokenizer + cache + 2 steps)
    python benchmarks/long_line.py --size-mb 20 --stage tokenizer cache
    python benchmarks/long_line.py --size-mb 200 --json long_line.json

Why: such a file (a minified dump, a log without newlines) used to cost ~46 bytes of memory per input
byte, because tokenizer training and the token cache worked on whole lines. Every measurement runs in
its own process and reports that process's peak resident set (``ru_maxrss`` of the child), so the
figures do not depend on what the benchmark itself holds.

Stages: ``fit`` (``llm-modules fit`` with a tiny model, the tokenizer trained on the data, 2 steps),
``tokenizer`` (``Tokenizer.train`` on the file alone) and ``cache`` (``build_token_cache`` of the file
with a tokenizer trained beforehand on a small sample). The text is seeded words with punctuation, so
every run measures the same bytes.

Measured (2-core CPU box, shared; peak RSS of the process):

| input, one line | stage | before (whole lines) | after (streamed) |
|---|---|---|---|
| 20 MB | fit | 1.39 GB (69 B/B) | 0.56 GB |
| 20 MB | cache | 0.97 GB (48 B/B) | 0.14 GB |
| 50 MB | fit | 2.93 GB (59 B/B) | |
| 200 MB | fit | 10.44 GB (52 B/B), 286 s | 0.72 GB (3.6 B/B), 111 s |
| 200 MB | tokenizer / cache | | 0.14 GB each |

After, what remains of the fit's peak is mostly torch and Lightning (~0.5 GB for any input).
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
_SYLLABLES = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]


def write_line(path: Path, size_mb: float, seed: int = 0) -> int:
    """A file of ``size_mb`` MB of words, spaces and punctuation, without a newline."""
    rng = random.Random(seed)
    vocab = sorted({"".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(1, 4))) for _ in range(20_000)})
    block = " ".join(rng.choice(vocab) + rng.choice(("", "", "", ",", ".", ";")) for _ in range(200_000)) + " "
    data = block.encode()
    total = int(size_mb * 1e6)
    with open(path, "wb") as f:
        written = 0
        while written < total:
            part = data[: total - written]
            f.write(part)
            written += len(part)
    return total


def child_peak(code: list[str], cwd: Path) -> tuple[int, float, int, str]:
    """Run ``code`` in a fresh process; its peak RSS in bytes, the seconds, the exit code, stderr's tail."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    proc = subprocess.run(code, cwd=cwd, capture_output=True, text=True, env={**__import__("os").environ,
                          "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if peak <= before:
        print("  (peak not above an earlier stage's: the figure is a lower bound)", file=sys.stderr)
    return max(peak, before) * 1024, seconds, proc.returncode, proc.stderr[-2000:]


def stage_command(stage: str, data: Path, work: Path) -> list[str]:
    if stage == "fit":
        return [sys.executable, "-m", "llm_modules", "fit", "--config", str(REPO / "configs" / "quickstart.yaml"),
                "--data.init_args.paths", f"[{data}]", "--data.init_args.cache_dir", str(work / "cache"),
                "--data.init_args.vocab_size", "512", "--data.init_args.num_sentinels", "8",
                "--data.init_args.seq_len", "32", "--data.init_args.batch_size", "4",
                "--data.init_args.val_fraction", "0", "--model.init_args.config.vocab_size", "512",
                "--model.init_args.config.d_model", "32", "--model.init_args.config.n_heads", "4",
                "--model.init_args.config.n_kv_heads", "4", "--model.init_args.config.max_seq_len", "64",
                "--trainer.max_steps", "2", "--trainer.limit_val_batches", "0",
                "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
                "--trainer.default_root_dir", str(work / "runs")]
    if stage == "tokenizer":
        code = ("import sys; from llm_modules.data.tokenizer import Tokenizer; "
                "Tokenizer.train([sys.argv[1]], vocab_size=512, num_sentinels=8)")
        return [sys.executable, "-c", code, str(data)]
    code = ("import sys; from pathlib import Path; from llm_modules.data.tokenizer import Tokenizer; "
            "from llm_modules.data.sources import resolve_paths; from llm_modules.data.token_cache import build_token_cache; "
            "head = Path(sys.argv[1]).open(encoding='utf-8').read(2_000_000); "
            "tok = Tokenizer.train(iter([head]), vocab_size=512, num_sentinels=8); "
            "c = build_token_cache(resolve_paths([sys.argv[1]]), tok, sys.argv[2]); print(c.num_tokens)")
    return [sys.executable, "-c", code, str(data), str(work / "cache-only")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=float, default=200.0)
    parser.add_argument("--stage", nargs="+", choices=("fit", "tokenizer", "cache"), default=["fit"])
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = work / "one-line.txt"
        size = write_line(data, args.size_mb)
        print(f"input: {size / 1e6:.0f} MB, one line", file=sys.stderr)
        for stage in args.stage:
            peak, seconds, code, err = child_peak(stage_command(stage, data, work), work)
            row = {"stage": stage, "input_bytes": size, "peak_rss_bytes": peak,
                   "bytes_per_input_byte": round(peak / size, 2), "seconds": round(seconds, 1), "exit": code}
            rows.append(row)
            print(f"{stage:>9}: peak RSS {peak / 1e9:.2f} GB = {peak / size:.2f} bytes per input byte, "
                  f"{seconds:.0f} s, exit {code}", file=sys.stderr)
            if code:
                print(err, file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    print(json.dumps(rows))
    return 0 if all(r["exit"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
