"""Wall time of the commands a user waits for: from launch to the answer (or to the first training step).

    python benchmarks/startup.py                       # in a folder where the quickstart has run once
    python benchmarks/startup.py --workdir /tmp/qs --rounds 5 --json startup.json

Each figure is a fresh ``llm-modules`` process (``python -m llm_modules``, so the interpreter, torch and
whatever the command imports are all counted), run ``--rounds`` times, commands taking turns so that a
machine busy with other work slows them alike; best and median are reported:

- ``generate``: ``generate CKPT --prompt "def main():" --max-new-tokens 40`` on the quickstart's
  ``last.ckpt`` (target: under 3 s);
- ``estimate``: ``estimate --preset llama-7b`` (target: under 2 s);
- ``fit-first-step``: ``fit --config configs/quickstart.yaml`` rerun where its tokenizer and token cache
  exist (a warm cache), timed from launch to the start of the first training step, then stopped
  (target: under 5 s). What comes before it is the start-up and the step-0 validation baseline (the
  quickstart's ``num_sanity_val_steps: 8`` batches: model math, not overhead), so the same launch is
  also timed with ``--trainer.num_sanity_val_steps 0`` (``fit-first-step-no-baseline``), and the
  first step's own duration is reported (``first-step-compute``).

``--workdir`` is where ``llm-modules fit --config configs/quickstart.yaml`` ran (its ``data/`` cache and
``runs/``); without a checkpoint there the script trains one (20 steps) first, which is not timed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = ROOT / "configs" / "quickstart.yaml"
TARGETS = {"generate": 3.0, "estimate": 2.0, "fit-first-step": 5.0}
#: written by the first training step of the timed fit (``_first_step.FirstStepTimer``)
STAMP = "LLM_MODULES_FIRST_STEP_FILE"


def parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path.cwd(), help="where the quickstart ran (default: here)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", nargs="+", choices=sorted(TARGETS), default=sorted(TARGETS))
    parser.add_argument("--json", type=Path, default=None)
    return parser.parse_args(argv)


def llm_modules(*args: str, cwd: Path, env: dict | None = None, timeout: float = 600) -> float:
    """Seconds from launch to exit of ``python -m llm_modules ARGS`` (which must succeed)."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "llm_modules", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"llm-modules {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return elapsed


def quickstart_checkpoint(workdir: Path) -> Path:
    found = sorted(workdir.glob("runs/llm/version_*/checkpoints/last.ckpt"), key=os.path.getmtime)
    if not found:
        print(f"no quickstart checkpoint under {workdir}/runs: training one (20 steps, not timed)", file=sys.stderr)
        llm_modules("fit", "--config", str(QUICKSTART), "--trainer.max_steps", "20", cwd=workdir)
        found = sorted(workdir.glob("runs/llm/version_*/checkpoints/last.ckpt"), key=os.path.getmtime)
    return found[-1]


def fit_first_step(workdir: Path, scratch: Path, *extra: str) -> tuple[float, float]:
    """Launch the quickstart fit; the first training step stamps the clock as it starts and ends, and
    stops the run. Returns (launch to the step's start, the step's own seconds)."""
    stamp = scratch / "first-step.txt"
    stamp.unlink(missing_ok=True)
    env = {**os.environ, STAMP: str(stamp),
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parent), os.environ.get("PYTHONPATH", "")])}
    start_wall = time.time()
    llm_modules("fit", "--config", str(QUICKSTART), "--trainer.default_root_dir", str(scratch / "runs"),
                "--trainer.callbacks+=_first_step.FirstStepTimer", *extra, cwd=workdir, env=env)
    started, ended = (float(line) for line in stamp.read_text().split())
    return started - start_wall, ended - started


def main(argv=None) -> dict:
    args = parse(argv)
    workdir = args.workdir.resolve()
    checkpoint = quickstart_checkpoint(workdir) if {"generate", "fit-first-step"} & set(args.only) else None
    names = list(args.only) + (["fit-first-step-no-baseline"] if "fit-first-step" in args.only else [])
    times: dict[str, list[float]] = {name: [] for name in names}
    if "fit-first-step" in args.only:
        times["first-step-compute"] = []
    with tempfile.TemporaryDirectory() as scratch:

        def fit(name: str, *extra: str) -> None:
            to_step, step = fit_first_step(workdir, Path(scratch), *extra)
            times[name].append(to_step)
            times["first-step-compute"].append(step)

        runners = {
            "generate": lambda: times["generate"].append(llm_modules(
                "generate", str(checkpoint), "--prompt", "def main():", "--max-new-tokens", "40", cwd=workdir)),
            "estimate": lambda: times["estimate"].append(llm_modules("estimate", "--preset", "llama-7b", cwd=workdir)),
            "fit-first-step": lambda: fit("fit-first-step"),
            "fit-first-step-no-baseline": lambda: fit("fit-first-step-no-baseline",
                                                      "--trainer.num_sanity_val_steps", "0"),
        }
        for round_ in range(args.rounds):
            order = names[round_ % len(names):] + names[:round_ % len(names)]
            for name in order:
                runners[name]()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    result = {"cpus": os.cpu_count(), "load_average_1m": load, "rounds": args.rounds, "commands": {}}
    print(f"{'command':<28} {'best s':>8} {'median s':>9} {'target s':>9}")
    for name, values in times.items():
        best, median = min(values), statistics.median(values)
        target = TARGETS.get(name)
        result["commands"][name] = {"best_s": round(best, 3), "median_s": round(median, 3), "target_s": target,
                                    "all_s": [round(v, 3) for v in values]}
        print(f"{name:<28} {best:8.2f} {median:9.2f} {'' if target is None else f'{target:9.1f}'}")
    print(f"(load average {load:.2f} on {os.cpu_count()} CPUs)" if load is not None else "")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
