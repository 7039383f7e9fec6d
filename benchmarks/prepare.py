"""Throughput of ``llm-modules data prepare``: MB/s of input text through the full pipeline, per stage.

    python benchmarks/prepare.py                          # ~50 MB generated corpus, 1 process
    python benchmarks/prepare.py --size-mb 20 --workers 2 --json prepare.json
    python benchmarks/prepare.py --corpus my_corpus/      # your own files, directories or JSONL

The generated corpus (seeded, so every run measures the same text) is the Python standard library's
source repeated with varied identifiers (each copy renames about half the words, so copies are not
near duplicates of each other), plus injected exact duplicates (3%), near duplicates (3%: one word in
300 changed), PII lines (10% of the documents: e-mail, phone, IP, card numbers) and an
evaluation file of passages taken from 20 documents (so decontamination has something to find). It is
written as JSONL shards in a temporary folder (or ``--keep DIR``).

Every stage runs with the default settings. The per-stage seconds are summed over documents (with
``--workers`` they are CPU seconds of all workers together); ``dedup+write`` is the main process's
exact/near-duplicate lookups and shard writing.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

_WORD = re.compile(r"\b[A-Za-z_][A-Za-z0-9_]{2,}\b")
PII_LINES = [
    "# contact: {name}@example.org, phone +1 415 555 {n4}",
    "# server at 192.168.{o1}.{o2}, backup 10.0.{o1}.{o2}",
    "# card on file: 4111 1111 1111 1111, call (555) 123-{n4}",
    "# ipv6 2001:db8::{h4}:{o1}, mail ops-{o2}@corp.example.com",
]


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=float, default=50.0, help="generated corpus size (default 50 MB)")
    parser.add_argument("--corpus", nargs="+", default=None, help="prepare these inputs instead of generating")
    parser.add_argument("--eval", nargs="+", default=None, help="evaluation files (with --corpus)")
    parser.add_argument("--workers", type=int, default=1, help="processes for the per-document stages")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, default=None, help="write corpus and output here and keep them")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    return parser.parse_args(argv)


def _vary(text: str, copy: int, rng_seed: int) -> str:
    """Rename about half of the words, consistently within one copy."""
    if copy == 0:
        return text
    cache: dict[str, str] = {}

    def sub(m: re.Match) -> str:
        w = m.group()
        if w not in cache:
            r = random.Random(f"{rng_seed}:{copy}:{w}")
            cache[w] = f"{w}_{copy}{r.choice('abcdefgh')}" if r.random() < 0.5 else w
        return cache[w]
    return _WORD.sub(sub, text)


def _near_copy(text: str, rng: random.Random) -> str:
    words = text.split(" ")
    for _ in range(max(1, len(words) // 300)):
        words[rng.randrange(len(words))] = f"changed{rng.randrange(10**6)}"
    return " ".join(words)


def generate(root: Path, size_mb: float, seed: int) -> tuple[list[str], list[str]]:
    from llm_modules.data.sources import stdlib_files

    rng = random.Random(seed)
    base = [f.path.read_text(encoding="utf-8", errors="replace") for f in stdlib_files()]
    base = [t for t in base if len(t) > 200]
    target = int(size_mb * 1e6)
    corpus = root / "corpus"
    corpus.mkdir(parents=True)
    docs: list[str] = []
    total = copy = 0
    shard, shard_bytes, shard_index = None, 0, 0
    while total < target:
        order = list(range(len(base)))
        rng.shuffle(order)
        for i in order:
            if total >= target:
                break
            roll = rng.random()
            if docs and roll < 0.03:
                text = rng.choice(docs)  # exact duplicate
            elif docs and roll < 0.06:
                text = _near_copy(rng.choice(docs), rng)  # near duplicate
            else:
                text = _vary(base[i], copy, seed)
                if rng.random() < 0.10:
                    line = rng.choice(PII_LINES).format(name=f"user{rng.randrange(1000)}", n4=rng.randrange(1000, 9999),
                                                        o1=rng.randrange(256), o2=rng.randrange(256),
                                                        h4=f"{rng.randrange(16**4):x}")
                    text = text + "\n" + line + "\n"
                if len(docs) < 20000:
                    docs.append(text)
            line = json.dumps({"text": text}) + "\n"
            if shard is None or shard_bytes > 8e6:
                if shard is not None:
                    shard.close()
                shard = open(corpus / f"part-{shard_index:03d}.jsonl", "w", encoding="utf-8")  # noqa: SIM115 (closed when the next opens)
                shard_index, shard_bytes = shard_index + 1, 0
            shard.write(line)
            shard_bytes += len(line)
            total += len(text.encode("utf-8"))
        copy += 1
    shard.close()
    eval_path = root / "eval.jsonl"
    with open(eval_path, "w", encoding="utf-8") as f:
        for text in rng.sample(docs, 20):
            words = text.split()
            start = rng.randrange(max(1, len(words) - 60))
            f.write(json.dumps({"text": " ".join(words[start:start + 60])}) + "\n")
    return [str(corpus)], [str(eval_path)]


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    from llm_modules.data.prepare import PrepareConfig, format_table, prepare

    root = args.keep or Path(tempfile.mkdtemp(prefix="prepare-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        if args.corpus:
            inputs, evals = args.corpus, args.eval or []
        else:
            t = time.perf_counter()
            inputs, evals = generate(root, args.size_mb, args.seed)
            print(f"generated {args.size_mb:g} MB corpus in {time.perf_counter() - t:.1f} s under {root}",
                  file=sys.stderr)
        config = PrepareConfig(inputs=inputs, out=str(root / "prepared"), workers=args.workers)
        config.decontamination.eval_paths = evals
        out = root / "prepared"
        if out.exists():
            shutil.rmtree(out)
        t = time.perf_counter()
        report = prepare(config, progress=False)
        wall = time.perf_counter() - t
        print(format_table(report, str(out)))
        mb = report["input"]["bytes"] / 1e6
        print(f"\nthroughput: {mb:.1f} MB in {wall:.1f} s = {mb / wall:.2f} MB/s (workers={args.workers})")
        print("stage seconds: " + ", ".join(f"{k} {v:.2f}" for k, v in report["stage_seconds"].items()))
        result = {"input_mb": mb, "wall_s": wall, "mb_per_s": mb / wall, "workers": args.workers,
                  "stage_seconds": report["stage_seconds"], "report": report}
        if args.json:
            args.json.write_text(json.dumps(result, indent=2) + "\n")
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
