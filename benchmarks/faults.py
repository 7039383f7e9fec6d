"""Fault injection: what survives a kill, a preemption, a full disk, a damaged checkpoint, a second run.

    python benchmarks/faults.py                    # every family, about 6 minutes on 2 cores
    python benchmarks/faults.py --kills 12 --seed 3 --json faults.json
    python benchmarks/faults.py --only corrupt      # one family: kill, corrupt, disk, concurrent

Each family runs the real ``llm-modules`` (``python -m llm_modules``) on a tiny model and corpus and
prints one row per trial and a summary; every promise it checks is stated on the Reliability page
(docs/reliability.md). Families:

- **kill**: a 48-step fit with a checkpoint every 4 steps gets SIGKILL, SIGTERM or SIGINT at a random
  moment, a third of them while a checkpoint is being written (a temporary file beside it exists). Then:
  the exit code (-9, 143 or 130; 0 if the run ended first), every checkpoint in the folder must load and
  verify, and ``--ckpt_path last`` finishes the run with weights and optimizer state bitwise equal to an
  uninterrupted run's.
- **corrupt**: the uninterrupted run's ``last.ckpt`` truncated at random lengths, with one random byte
  flipped, and replaced by a pickle that runs code; ``validate``, ``generate``, ``convert to-hf`` and
  ``fit --ckpt_path`` on each must refuse with one line (exit 2, no traceback) and run no code, or, for a
  flip that lands outside the tensor data and the header, give exactly the intact model.
- **disk**: the run folder on a small tmpfs (root only; skipped otherwise) that fills up during the
  run: a non-zero exit, one line saying "no space left on device" and the path, and the last complete
  checkpoint intact with no temporary file left.
- **concurrent**: two fits started together in one folder: both finish, in two version folders, each
  ``metrics.csv`` holding its own steps once.

The tests hold one case of each (tests/integration/test_preemption.py, tests/integration/test_checkpoint_integrity.py,
tests/unit/test_no_unpickling.py, tests/integration/test_run_folders.py); this script draws many at random.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))  # the suite's tiny-run helpers: one definition of "tiny"

from _fit_helpers import CONFIGS, launch, reap, tiny, write_corpus  # noqa: E402
from test_resume import weights_and_optimizer as state  # noqa: E402  (weights, optimizer tensors, step)

STEPS, EVERY = 48, 4
MARKER = "pwned"


def fit_args(corpus: Path, cache: Path, *extra: str) -> list[str]:
    return ["fit", *tiny(CONFIGS / "quickstart.yaml", corpus, cache,
                         "--trainer.deterministic", "true", "--trainer.log_every_n_steps", "1",
                         "--model.init_args.config.dropout", "0.1",
                         "--checkpoint.every_n_train_steps", str(EVERY), *extra, steps=STEPS)]


def run_folder(cwd: Path) -> Path:
    return cwd / "runs" / "llm" / "version_0"


def same(a: dict, b: dict) -> bool:
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def verifies(ckpt: Path) -> bool:
    """The library's own reading of a checkpoint (checksum included) accepts it."""
    from llm_modules.checkpoint import load_checkpoint

    try:
        load_checkpoint(ckpt)
        return True
    except Exception:  # noqa: BLE001 - any refusal counts as "does not verify"
        return False


def one_line_refusal(code: int, err: str) -> bool:
    lines = [line for line in err.splitlines() if line.strip()]
    return code == 2 and len(lines) == 1 and "Traceback" not in err and "weights_only=False" not in err


def cli(argv: list[str], cwd: Path) -> tuple[int, str]:
    """``llm-modules ARGV`` in a subprocess: (exit code, stderr lines that are not progress)."""
    done = subprocess.run([sys.executable, "-m", "llm_modules", *argv], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return done.returncode, done.stderr


# ---- families -------------------------------------------------------------------------------------------


def timed_reference(corpus: Path, cache: Path, cwd: Path) -> tuple[float, float]:
    """Run the uninterrupted reference; return when (seconds after launch) its first and its last
    checkpoint appeared: the kills are drawn from that span, where training is under way."""
    cwd.mkdir()
    ckpts = run_folder(cwd) / "checkpoints"
    proc = launch(fit_args(corpus, cache), cwd, wait=False)
    start, first, latest, seen = time.monotonic(), None, None, set()
    try:
        while proc.poll() is None:
            names = {p.name for p in ckpts.iterdir()} if ckpts.is_dir() else set()
            if names - seen:
                latest = time.monotonic() - start
                first = first if first is not None else latest
                seen |= names
            time.sleep(0.01)
        out, _ = proc.communicate(timeout=60)
    finally:
        reap(proc)
    assert proc.returncode == 0 and first is not None, out[-3000:]
    return first, latest


def kill_family(root: Path, corpus: Path, cache: Path, reference: dict, training: tuple[float, float],
                trials: int, rng: random.Random) -> list[dict]:
    rows = []
    signals = [signal.SIGKILL, signal.SIGTERM, signal.SIGINT]
    for trial in range(trials):
        sig = signals[trial % 3]
        mid_save = trial % 3 == 1 or (trial // 3) % 3 == 2
        cwd = root / f"kill{trial}"
        cwd.mkdir()
        proc = launch(fit_args(corpus, cache), cwd, wait=False)
        ckpts = run_folder(cwd) / "checkpoints"
        # mostly while training (where a checkpoint exists to resume from), some during start-up
        when = rng.uniform(0.8 * training[0], training[1])
        start = time.monotonic()
        try:
            while proc.poll() is None and time.monotonic() - start < when:
                time.sleep(0.02)
            if mid_save:  # wait for a save in progress (a temporary file beside its target)
                while proc.poll() is None and time.monotonic() - start < training[1] * 1.5:
                    if ckpts.is_dir() and any(p.name.endswith(".tmp") for p in ckpts.iterdir()):
                        break
                    time.sleep(0.001)
            signalled = proc.poll() is None
            if signalled:
                proc.send_signal(sig)
            out, _ = proc.communicate(timeout=300)
        finally:
            reap(proc)
        expected = {signal.SIGKILL: -9, signal.SIGTERM: 143, signal.SIGINT: 130}[sig] if signalled else 0
        files = sorted(ckpts.glob("*.ckpt")) if ckpts.is_dir() else []
        row = {"family": "kill", "signal": sig.name, "mid_save": mid_save, "signalled": signalled,
               "exit": proc.returncode, "exit_ok": proc.returncode == expected,
               "checkpoints": len(files), "all_verify": all(verifies(f) for f in files),
               "temps_left": len([p for p in ckpts.iterdir() if p.name.endswith(".tmp")]) if ckpts.is_dir() else 0}
        last = ckpts / "last.ckpt"
        if last.is_file():
            row["stopped_at"] = int(state(last)["global_step"])
            code, err = cli([*fit_args(corpus, cache), "--ckpt_path", "last"], cwd)
            row["resumed_exit"] = code
            row["bitwise"] = code == 0 and same(state(last), reference)
        else:  # killed before the first checkpoint: a fresh start is all there is
            row["stopped_at"], row["bitwise"] = None, None
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def damaged_copies(last: Path, out: Path, rng: random.Random, flips: int, cuts: int) -> list[tuple[str, Path]]:
    data = last.read_bytes()
    made = []
    for i in range(cuts):
        path = out / f"truncated{i}.ckpt"
        path.write_bytes(data[: rng.randrange(1, len(data))])
        made.append(("truncated", path))
    for i in range(flips):
        raw = bytearray(data)
        at = rng.randrange(len(raw))
        raw[at] ^= 1 << rng.randrange(8)
        path = out / f"flipped{i}.ckpt"
        path.write_bytes(bytes(raw))
        made.append(("flipped", path))
    path = out / "malicious.ckpt"
    path.write_bytes(malicious_pickle(out / MARKER))
    made.append(("malicious", path))
    return made


def malicious_pickle(marker: Path) -> bytes:
    import pickle

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    return pickle.dumps({"state_dict": Payload()})


def corrupt_family(root: Path, corpus: Path, cache: Path, last: Path, trials: int, rng: random.Random) -> list[dict]:
    rows = []
    work = root / "corrupt"
    work.mkdir()
    intact = state(last)
    for kind, path in damaged_copies(last, work, rng, flips=max(1, trials // 2), cuts=max(1, trials - trials // 2)):
        for command in (["validate", "--ckpt_path", str(path), "--data.paths", f"[{corpus}]"],
                        ["generate", str(path), "--prompt", "def", "--max-new-tokens", "4"],
                        ["convert", "to-hf", str(path), str(work / f"hf-{path.stem}")],
                        [*fit_args(corpus, cache), "--ckpt_path", str(path)]):
            code, err = cli(command, work)
            accepted_intact = False
            if code == 0 and kind == "flipped":
                with contextlib.suppress(Exception):
                    accepted_intact = same(state(path), intact)  # the flip hit neither data nor header
            row = {"family": "corrupt", "damage": kind, "file": path.name, "command": command[0], "exit": code,
                   "refused_in_one_line": one_line_refusal(code, err), "accepted_intact": accepted_intact,
                   "code_ran": (work / MARKER).exists(), "message": err.strip().splitlines()[-1][:160] if err.strip() else ""}
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


@contextlib.contextmanager
def small_disk(path: Path, kilobytes: int):
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={kilobytes}k", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        yield None
        return
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def disk_family(root: Path, corpus: Path, cache: Path, checkpoint_bytes: int) -> list[dict]:
    rows = []
    # room for the logs and one and a half checkpoints: the first save fits, the second (a new file
    # beside the old one until the rename) does not
    kilobytes = int(1.5 * checkpoint_bytes / 1024) + 96
    with small_disk(root / "disk", kilobytes) as disk:
        if disk is None:
            print("disk: skipped (mounting a tmpfs needs root)", flush=True)
            return [{"family": "disk", "skipped": True}]
        code, err = cli(fit_args(corpus, cache), disk)
        ckpts = run_folder(disk) / "checkpoints"
        files = sorted(ckpts.glob("*.ckpt")) if ckpts.is_dir() else []
        lines = [line for line in err.splitlines() if "error" in line.lower()]
        last = ckpts / "last.ckpt"
        row = {"family": "disk", "size_kb": kilobytes, "exit": code, "error_lines": lines[-2:],
               "says_no_space": any("no space left on device" in line.lower() for line in lines),
               "traceback": "Traceback" in err, "checkpoints": len(files),
               "all_verify": all(verifies(f) for f in files),
               "last_step": int(state(last)["global_step"]) if last.is_file() else None,
               "temps_left": len([p for p in ckpts.iterdir() if p.name.endswith(".tmp")]) if ckpts.is_dir() else 0}
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def concurrent_family(root: Path, corpus: Path, cache: Path, trials: int) -> list[dict]:
    rows = []
    for trial in range(trials):
        cwd = root / f"together{trial}"
        cwd.mkdir()
        procs = [launch(fit_args(corpus, cache), cwd, wait=False) for _ in range(2)]
        try:
            for p in procs:
                p.communicate(timeout=400)
            codes = [p.returncode for p in procs]
        finally:
            for p in procs:
                reap(p)
        folders = sorted(p for p in (cwd / "runs" / "llm").iterdir() if p.is_dir())
        steps_once = []
        for folder in folders:
            try:
                with open(folder / "metrics.csv", newline="") as f:
                    steps = [int(r["step"]) for r in csv.DictReader(f) if r.get("train/loss")]
                steps_once.append(steps == list(range(STEPS)))
            except (OSError, ValueError, KeyError, csv.Error):
                steps_once.append(False)
        row = {"family": "concurrent", "exits": codes, "folders": [f.name for f in folders],
               "each_metrics_one_run": steps_once, "ok": codes == [0, 0] and len(folders) == 2 and all(steps_once)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


# ---- driver -------------------------------------------------------------------------------------------


def summary(rows: list[dict]) -> dict:
    kills = [r for r in rows if r["family"] == "kill"]
    corrupt = [r for r in rows if r["family"] == "corrupt"]
    out = {}
    if kills:
        resumed = [r for r in kills if r["bitwise"] is not None]
        out["kill"] = {"trials": len(kills), "mid_save": sum(r["mid_save"] for r in kills),
                       "exit_code_right": sum(r["exit_ok"] for r in kills),
                       "every_checkpoint_verifies": sum(r["all_verify"] for r in kills),
                       "temps_left_behind": sum(r["temps_left"] for r in kills),
                       "resumed": len(resumed), "resumed_bitwise": sum(bool(r["bitwise"]) for r in resumed)}
    if corrupt:
        out["corrupt"] = {"attempts": len(corrupt),
                          "refused_in_one_line": sum(r["refused_in_one_line"] for r in corrupt),
                          "accepted_intact_flip": sum(r["accepted_intact"] for r in corrupt),
                          "code_ran": sum(r["code_ran"] for r in corrupt)}
    for family in ("disk", "concurrent"):
        found = [r for r in rows if r["family"] == family]
        if found:
            out[family] = found
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=9, help="kill trials (signals rotate: KILL, TERM, INT)")
    parser.add_argument("--corruptions", type=int, default=4, help="damaged copies (truncations and bit flips)")
    parser.add_argument("--concurrent", type=int, default=2, help="pairs of runs started together")
    parser.add_argument("--only", choices=["kill", "corrupt", "disk", "concurrent"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="write every row and the summary here")
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    root = Path(tempfile.mkdtemp(prefix="llm-faults-"))
    try:
        corpus, cache = write_corpus(root / "corpus"), root / "cache"
        (root / "warm-up").mkdir()
        launch(fit_args(corpus, cache), root / "warm-up")  # trains the tokenizer and fills the token cache
        training = timed_reference(corpus, cache, root / "reference")
        last = run_folder(root / "reference") / "checkpoints" / "last.ckpt"
        reference = state(last)
        print(f"reference: saves from {training[0]:.1f} s to {training[1]:.1f} s after launch, "
              f"checkpoint {last.stat().st_size} bytes", flush=True)
        rows: list[dict] = []
        wanted = lambda family: args.only in (None, family)  # noqa: E731
        if wanted("kill"):
            rows += kill_family(root, corpus, cache, reference, training, args.kills, rng)
        if wanted("corrupt"):
            rows += corrupt_family(root, corpus, cache, last, args.corruptions, rng)
        if wanted("disk"):
            rows += disk_family(root, corpus, cache, last.stat().st_size)
        if wanted("concurrent"):
            rows += concurrent_family(root, corpus, cache, args.concurrent)
        result = summary(rows)
        print(json.dumps(result, indent=1))
        if args.json:
            args.json.write_text(json.dumps({"rows": rows, "summary": result}, indent=1))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
