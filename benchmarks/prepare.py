"""Throughput of ``llm-modules data prepare``: MB/s of input text, per executor, beside the pipeline it replaced.

    python benchmarks/prepare.py                          # ~50 MB corpus: baseline, local 1 and 2 workers, Ray 2 workers
    python benchmarks/prepare.py --size-mb 20 --runs local-1,local-2 --json prepare.json
    python benchmarks/prepare.py --corpus my_corpus/      # your own files, directories or JSONL
    python benchmarks/prepare.py --ray-address HOST:6379  # an existing Ray cluster (default: one started here, 2 CPUs)

Each run is the command a user types (``python -m llm_modules data prepare ...``, start-up included),
timed wall to wall, ``--rounds`` times, best and median reported. ``baseline`` is the same command
from ``--baseline REV`` (default: the last commit before ``data prepare`` ran on datatrove, whose own
process pool did the per-document stages), exported with ``git archive``. Every run's shards are
compared byte for byte with the first run's: the table says whether they are identical.

The generated corpus (seeded, so every run measures the same text) is the Python standard library's
source repeated with varied identifiers (each copy renames about half the words, so copies are not
near duplicates of each other), plus injected exact duplicates (3%), near duplicates (3%: one word in
300 changed), PII lines (10% of the documents: e-mail, phone, IP, card numbers) and an
evaluation file of passages taken from 20 documents (so decontamination has something to find). It is
written as JSONL shards in a temporary folder (or ``--keep DIR``).

Every stage runs with the default settings. The per-stage seconds are summed over documents (with
``--workers`` they are CPU seconds of all workers together).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BASELINE_REV = "6c6aa4d"  # data prepare on its own process pool (before datatrove executors)
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
    parser.add_argument("--runs", default="baseline,baseline-2,local-1,local-2,ray-2",
                        help="comma-separated: baseline, baseline-N, local-N, ray-N (N workers)")
    parser.add_argument("--rounds", type=int, default=1, help="times each run is repeated (best and median)")
    parser.add_argument("--baseline", default=BASELINE_REV, help="git revision of the baseline run")
    parser.add_argument("--ray-address", default=None, help="an existing Ray cluster (default: start one, 2 CPUs)")
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


def _export_baseline(rev: str, into: Path) -> Path:
    """The repository at ``rev`` as plain files (``git archive``), for the baseline run's PYTHONPATH."""
    repo = Path(__file__).resolve().parent.parent
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(repo), "archive", rev], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


@contextlib.contextmanager
def _ray_cluster(address: str | None, root: Path):
    """``address``, or a Ray head with 2 CPUs on 127.0.0.1 started for the benchmark and stopped after."""
    if address:
        yield address
        return
    ray = shutil.which("ray") or str(Path(sys.executable).parent / "ray")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # both sides agree, whatever ~/.ray holds
    with open(root / "ray-start.log", "w") as log:  # a file: the daemons keep their output open
        subprocess.run([ray, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port), "--num-cpus",
                        "2", "--include-dashboard", "false", "--disable-usage-stats", "--temp-dir", temp],
                       stdout=log, stderr=subprocess.STDOUT, check=True, timeout=300)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([ray, "stop", "--force"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)
        shutil.rmtree(temp, ignore_errors=True)


def _run(name: str, inputs: list[str], evals: list[str], out: Path, baseline: Path | None,
         ray_address: str | None) -> tuple[float, dict]:
    kind, _, workers = name.partition("-")
    command = [sys.executable, "-m", "llm_modules", "data", "prepare", *inputs, "--out", str(out), "--no-progress"]
    if evals:
        command += ["--eval", *evals]
    env = dict(os.environ)
    if kind == "baseline":  # the exported tree, ahead of an editable install's import hook
        command[1:3] = ["-c", _FROM_BASELINE.format(root=str(baseline))]
    elif kind == "ray":
        command += ["--executor", "ray", "--ray-address", ray_address]
    command += ["--workers", workers or "1"]
    if out.exists():
        shutil.rmtree(out)
    t = time.perf_counter()
    with open(out.with_suffix(".log"), "w") as log:
        subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT, check=True)
    wall = time.perf_counter() - t
    return wall, json.loads((out / "report.json").read_text())


_FROM_BASELINE = ("import sys; sys.meta_path[:] = [f for f in sys.meta_path if '__editable__' not in "
                  "getattr(f, '__module__', '')]; sys.path.insert(0, {root!r}); "
                  "from llm_modules.cli import main; sys.exit(main(sys.argv[1:]))")


def _shards(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("shard-*.jsonl"))}


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    from llm_modules.data.prepare import format_table

    runs = [r.strip() for r in args.runs.split(",") if r.strip()]
    if any(r.startswith("ray") for r in runs) and importlib.util.find_spec("ray") is None:
        print("ray is not installed (pip install 'llm-modules[ray]'): leaving out " +
              ", ".join(r for r in runs if r.startswith("ray")), file=sys.stderr)
        runs = [r for r in runs if not r.startswith("ray")]
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
        wants_baseline = any(r.partition("-")[0] == "baseline" for r in runs)
        baseline = _export_baseline(args.baseline, root / "baseline-src") if wants_baseline else None
        uses_ray = any(r.startswith("ray") for r in runs)
        results: dict[str, dict] = {}
        reference: dict[str, bytes] | None = None
        with _ray_cluster(args.ray_address, root) if uses_ray else contextlib.nullcontext() as address:
            for round_ in range(args.rounds):
                for name in runs:
                    out = root / f"out-{name}"
                    wall, report = _run(name, inputs, evals, out, baseline, address)
                    shards = _shards(out)
                    reference = shards if reference is None else reference
                    entry = results.setdefault(name, {"walls": [], "identical": True, "report": report})
                    entry["walls"].append(wall)
                    entry["identical"] &= shards == reference
        mb = next(iter(results.values()))["report"]["input"]["bytes"] / 1e6
        print(format_table(next(iter(results.values()))["report"], "first run"))
        print(f"\n{mb:.1f} MB of input; wall time of the whole command (start-up included), {args.rounds} round(s)\n")
        print(f"{'run':<12} {'best s':>8} {'median s':>9} {'MB/s':>7}  shards identical to {runs[0]}")
        for name, entry in results.items():
            walls = sorted(entry["walls"])
            best, median = walls[0], walls[len(walls) // 2]
            entry.update(best_s=best, median_s=median, mb_per_s=mb / best)
            print(f"{name:<12} {best:>8.1f} {median:>9.1f} {mb / best:>7.2f}  {'yes' if entry['identical'] else 'NO'}")
            seconds = entry["report"].get("stage_seconds", {})
            print("    stage seconds: " + ", ".join(f"{k} {v:.2f}" for k, v in seconds.items()))
        if args.json:
            summary = {name: {k: v for k, v in e.items() if k != "report"} | {"stage_seconds": e["report"].get(
                "stage_seconds")} for name, e in results.items()}
            args.json.write_text(json.dumps({"input_mb": mb, "runs": summary}, indent=2) + "\n")
        return 0 if all(e["identical"] for e in results.values()) else 1
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
