"""GPU readiness in one call: install from wheels, the GPU tests, MFU, attention, decoding, one JSON.

    bash benchmarks/gpu_suite.sh --wheels DIR --out gpu_suite.json     # a fresh GPU machine, no network
    python benchmarks/gpu_suite.py --out gpu_suite.json                 # everything installed already
    python benchmarks/gpu_suite.py --cpu-smoke --out smoke.json         # tiny sizes on a CPU: the plumbing

Sections, in order, each within its share of one time budget (``--budget-s``, 9 minutes less a
margin by default):

- ``install``: every distribution the project needs (pyproject's dependencies, torch pinned to
  ``--torch-version``, pytest and psutil for the tests) that is not installed is installed from
  ``--wheels DIR`` with ``pip install --no-index --find-links DIR``; then the project and its two
  attention plugins as editable installs (``--no-deps --no-build-isolation``: nothing is fetched),
  and flash-attn / xformers when their wheels are in DIR. Skipped when everything is installed.
- ``gpu_tests``: pytest on the tests that skip without CUDA (``_gpu_test_selection``).
- ``mfu``: ``benchmarks/mfu.py`` on llama-350m and llama-1b, sequence 2048, bf16-mixed, eager and
  ``torch.compile``; MFU against the datasheet's dense peak.
- ``attention``: ``benchmarks/attention.py`` forward + backward TFLOP/s at 2048 and 8192 tokens for
  sdpa, flex, flash_attn and xformers; a backend that cannot run here is recorded as skipped with
  attention.py's reason.
- ``decode``: ``benchmarks/generate.py`` new tokens/s, llama-350m, batch 1 and 8, ours and transformers'
  ``generate`` on the same weights (identical tokens, or the job fails).

Every measurement runs in its own process (its own process group, killed at its time limit), so
an out-of-memory error, a crash or a hang costs that measurement only: it is recorded with its
status and the end of its output, and the suite goes on. The JSON is rewritten after every step,
so even a suite killed from outside leaves what it had measured. Without CUDA the GPU sections are
recorded as skipped with the reason; ``--cpu-smoke`` runs them on the CPU at tiny sizes instead.

This module imports only the standard library: it must run before the packages are installed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"

SECTIONS = ("install", "gpu_tests", "mfu", "attention", "decode")
ATTENTION_BACKENDS = ("sdpa", "flex", "flash_attn", "xformers")
#: nine minutes, less a margin for starting Python and writing the file
DEFAULT_BUDGET_S = 510.0
#: what the tests need beyond the project's own dependencies
TEST_REQUIREMENTS = ("pytest>=8", "psutil>=5.9")
#: the project and its attention plugins, installed from this checkout (distribution name, folder)
LOCAL_DISTRIBUTIONS = (("llm-modules", "."), ("llm-modules-flash-attn", "plugins/flash_attn"),
                       ("llm-modules-xformers", "plugins/xformers"))
#: kernels the plugins use, installed only when the wheels folder has them (distribution name)
OPTIONAL_KERNELS = ("flash-attn", "xformers")
TAIL_CHARS = 2000
#: a line of a test file that may declare a GPU skipif (its condition or reason mentions CUDA / a GPU)
SKIPIF_LINE = re.compile(r"skipif\(.*(cuda|gpu)", re.IGNORECASE)


def parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("gpu_suite.json"), help="the JSON file to write")
    parser.add_argument("--wheels", type=Path, default=None,
                        help="a folder of wheels to install missing packages from (pip --no-index)")
    parser.add_argument("--torch-version", default="2.13.0", help="the torch to install when none is installed")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S,
                        help="seconds for the whole suite; each measurement gets at most its own limit "
                             "and never the time the ones after it need")
    parser.add_argument("--cpu-smoke", action="store_true",
                        help="run every section on the CPU at tiny sizes (checks the suite itself)")
    parser.add_argument("--test-files", nargs="+", type=Path, default=None,
                        help="test files for gpu_tests (default: every file with a CUDA skipif)")
    parser.add_argument("--logs", type=Path, default=None, help="keep each measurement's full output here")
    parser.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)  # the device/versions probe
    args = parser.parse_args(argv)
    if args.wheels is not None and not args.wheels.is_dir():
        parser.exit(2, f"gpu_suite.py: error: --wheels {args.wheels}: no such folder; "
                       "give the folder that holds the .whl files\n")
    for path in args.test_files or ():
        if not path.is_file():
            parser.exit(2, f"gpu_suite.py: error: --test-files {path}: no such file\n")
    if args.budget_s <= 0:
        parser.exit(2, f"gpu_suite.py: error: --budget-s must be positive, got {args.budget_s}\n")
    # the measurements run in the checkout's root: paths given relative to the caller's folder are made absolute
    for name in ("out", "wheels", "logs"):
        if getattr(args, name) is not None:
            setattr(args, name, getattr(args, name).resolve())
    args.test_files = [path.resolve() for path in args.test_files] if args.test_files else None
    return args


# ---- install -----------------------------------------------------------------------------------------------


def canonical(name: str) -> str:
    """PEP 503's normalized distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    return canonical(re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement).group(1))


def project_requirements(root: Path = ROOT) -> list[str]:
    """pyproject.toml's ``[project] dependencies``."""
    text = (root / "pyproject.toml").read_text()
    try:
        import tomllib
    except ImportError:  # Python 3.10: the list is plain enough to read without a TOML parser
        block = re.search(r"^dependencies\s*=\s*\[(.*?)\]", text, re.S | re.M).group(1)
        return re.findall(r'"([^"]+)"', block)
    return list(tomllib.loads(text)["project"]["dependencies"])


def installed_distributions() -> dict[str, str]:
    """{normalized name: version} of every installed distribution."""
    return {canonical(d.metadata["Name"]): d.version for d in metadata.distributions() if d.metadata["Name"]}


def wheel_versions(wheels: Path | None) -> dict[str, set[str]]:
    """{distribution: versions} a wheels folder holds (a wheel's file name is NAME-VERSION-...)."""
    found: dict[str, set[str]] = {}
    for path in wheels.glob("*.whl") if wheels else ():
        name, version = path.name.split("-")[:2]
        found.setdefault(canonical(name), set()).add(version.split("+")[0])
    return found


def install_plan(installed: dict[str, str], wheels: Path | None, torch_version: str, root: Path = ROOT,
                 python: str = sys.executable) -> dict:
    """{"missing": what is not installed, "commands": the pip commands that install it, "notes"};
    nothing is fetched from the network.

    A requirement whose distribution is installed counts as met, whatever its version, so a machine
    image's own CUDA torch stays, except that a torch wheel of ``torch_version`` in the folder
    replaces another installed torch (the folder says which build to measure). The project and
    its plugins are editable installs of this checkout (their entry points register the plugins)."""
    requirements = [*project_requirements(root), *TEST_REQUIREMENTS]
    given = wheel_versions(wheels)
    missing = [req for req in requirements if requirement_name(req) not in installed]
    missing = [f"torch=={torch_version}" if requirement_name(req) == "torch" else req for req in missing]
    notes = []
    torch_now = installed.get("torch", "").split("+")[0]
    if torch_now and torch_now != torch_version:
        if torch_version in given.get("torch", ()):
            missing.insert(0, f"torch=={torch_version}")
        else:
            notes.append(f"torch {installed['torch']} is installed, not {torch_version}: kept "
                         f"(no torch {torch_version} wheel in --wheels)")
    pip = [python, "-m", "pip", "install", "--no-index", "--disable-pip-version-check"]
    commands = []
    if missing:
        commands.append([*pip, "--find-links", str(wheels), *missing])
    kernels = [k for k in OPTIONAL_KERNELS if k not in installed and k in given]
    if kernels:  # their wheels pin torch versions; --no-deps keeps the torch that is there
        commands.append([*pip, "--no-deps", "--find-links", str(wheels), *kernels])
    local = [(name, folder) for name, folder in LOCAL_DISTRIBUTIONS if canonical(name) not in installed]
    if local:
        editable = [arg for _, folder in local for arg in ("-e", str((root / folder).resolve()))]
        # pyproject's build-system (setuptools>=69, wheel) from the folder when it has them, else the
        # machine's own setuptools (which may be too old: then bring both wheels)
        build = (["--find-links", str(wheels)] if {"setuptools", "wheel"} <= given.keys()
                 else ["--no-build-isolation"])
        commands.append([*pip, "--no-deps", *build, *editable])
    return {"missing": missing + kernels + [name for name, _ in local], "commands": commands, "notes": notes}


# ---- the device and versions (run in a child process, after installing) ------------------------------------


def probe() -> dict:
    """The device and the versions of what the suite measures with; never raises."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for dist in ("torch", "lightning", "triton", "flash-attn", "xformers", "transformers", "jsonargparse",
                 "llm-modules", "llm-modules-flash-attn", "llm-modules-xformers"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    try:
        import torch
    except Exception as err:  # noqa: BLE001 - any import failure is what the JSON must say
        return {"versions": versions, "device": {"cuda": False, "name": None,
                                                  "reason": f"torch cannot be imported: {err}"}}
    versions["torch"], versions["cuda"] = torch.__version__, torch.version.cuda
    if not torch.cuda.is_available():
        device = {"cuda": False, "name": f"CPU ({platform.machine()})",
                  "reason": "no CUDA device: torch.cuda.is_available() is False"}
    else:
        props = torch.cuda.get_device_properties(0)
        device = {"cuda": True, "name": props.name, "count": torch.cuda.device_count(),
                  "capability": list(torch.cuda.get_device_capability(0)),
                  "memory_gib": round(props.total_memory / 2**30, 1), "multiprocessors": props.multi_processor_count}
        try:
            smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20)
            device["driver"] = smi.stdout.strip().splitlines()[0] if smi.returncode == 0 and smi.stdout else None
        except (OSError, subprocess.TimeoutExpired):
            device["driver"] = None
    return {"versions": versions, "device": device}


# ---- the measurements ---------------------------------------------------------------------------------------


def gpu_test_files(tests: Path) -> list[Path]:
    """The test files that may hold GPU tests, found by text without importing any (which would
    cost the suite's budget): tests/gpu/ and every file with a ``skipif`` line that mentions CUDA
    or a GPU. ``_gpu_test_selection`` then keeps only the GPU tests of these files."""
    found = set((tests / "gpu").glob("test_*.py"))
    for path in tests.rglob("test_*.py"):
        text = path.read_text(encoding="utf-8", errors="replace")
        if any(SKIPIF_LINE.search(line) for line in text.splitlines()):
            found.add(path)
    return sorted(found)


@dataclass
class Job:
    """One measurement: a command in its own process, or a reason it is not run."""

    section: str
    name: str
    cmd: list[str] = field(default_factory=list)
    timeout: float = 60.0
    #: seconds this job is guaranteed: the jobs before it never take them
    floor: float = 10.0
    #: the file the command writes its figures to (its --json / --junitxml)
    output: Path | None = None
    skipped: str | None = None


def plan(args: argparse.Namespace, work: Path) -> list[Job]:
    """Every measurement of the sections asked for, in order: GPU sizes, or tiny CPU ones with
    ``--cpu-smoke`` (without CUDA and without it, the caller records each job as skipped)."""
    py = sys.executable
    smoke = args.cpu_smoke
    jobs: list[Job] = []
    want = set(args.sections)

    if "gpu_tests" in want:
        files = args.test_files or gpu_test_files(ROOT / "tests")
        out = work / "gpu_tests.xml"
        jobs.append(Job("gpu_tests", "pytest", [py, "-m", "pytest", "-q", "-p", "_gpu_test_selection",
                                                "-p", "no:cacheprovider", f"--junitxml={out}",
                                                *(str(f) for f in files)],
                        timeout=120, floor=30, output=out))

    if "mfu" in want:
        # (model, micro-batch, seq) x eager/compiled: the batches fit an 80 GB H100 without
        # activation checkpointing. llama-1b and the smoke run's tiny are train_step.py configs.
        models = [("tiny", 2, 32)] if smoke else [("llama-350m", 8, 2048), ("llama-1b", 4, 2048)]
        steps = ["--steps", "2", "--warmup", "1"] if smoke else ["--steps", "12", "--warmup", "4"]
        for compiled in (False, True):
            for model, batch, seq in models:
                mode = "compiled" if compiled else "eager"
                out = work / f"mfu-{model}-{mode}.json"
                cmd = [py, str(BENCH / "mfu.py"), "--preset", model, "--seq-len", str(seq), "--batch-size",
                       str(batch), "--precision", "bf16-mixed", *steps, "--json", str(out)]
                job = Job("mfu", f"{model}/{mode}", cmd + (["--compile"] if compiled else []),
                          timeout=170 if compiled else 60, floor=45 if compiled else 20, output=out)
                if compiled and smoke:
                    job.skipped = "--cpu-smoke leaves torch.compile out (minutes on a CPU)"
                jobs.append(job)

    if "attention" in want:
        sizes = (["--seq-lens", "64", "--batch", "1", "--heads", "2", "--head-dim", "32", "--device", "cpu",
                  "--warmup", "1", "--iters", "1"] if smoke else
                 ["--seq-lens", "2048", "8192", "--tokens", "16384", "--heads", "16", "--head-dim", "128",
                  "--device", "cuda", "--warmup", "3", "--iters", "10"])
        # one process per backend on a GPU, so that a kernel that crashes costs its own figures only;
        # on a CPU one process for all (the plumbing is the same, the start-up is paid once)
        groups = [list(ATTENTION_BACKENDS)] if smoke else [[name] for name in ATTENTION_BACKENDS]
        for group in groups:
            out = work / f"attention-{'-'.join(group)}.json"
            jobs.append(Job("attention", "+".join(group),
                            [py, str(BENCH / "attention.py"), *sizes, "--backends", *group, "--json", str(out)],
                            timeout=75 if "flex" in group else 35, floor=25 if "flex" in group else 12,
                            output=out))

    if "decode" in want:
        for batch in ((2,) if smoke else (1, 8)):
            out = work / f"decode-batch{batch}.json"
            sizes = (["--config", "tiny", "--device", "cpu", "--prompt-len", "4", "--new-tokens", "4", "--rounds", "1"]
                     if smoke else
                     ["--config", "llama-350m", "--device", "cuda", "--prompt-len", "128", "--new-tokens", "128",
                      "--rounds", "3"])
            jobs.append(Job("decode", f"batch-{batch}",
                            [py, str(BENCH / "generate.py"), *sizes, "--batch-size", str(batch), "--json", str(out)],
                            timeout=60, floor=15, output=out))
    return jobs


def run_process(cmd: list[str], timeout: float, log: Path, env: dict) -> tuple[int | None, float]:
    """(exit code or None if it ran past ``timeout``, seconds). The command runs in a new process
    group; whatever of that group is left when it ends or at the limit (torch.compile's worker
    processes, a hung kernel) is killed."""
    start = time.perf_counter()
    with open(log, "wb") as sink:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            rc = None
        finally:
            end_group(proc)
    return rc, time.perf_counter() - start


def end_group(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL, the process group ``proc`` leads (this suite's child, nothing else)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        until = time.monotonic() + 5
        while time.monotonic() < until:
            if proc.poll() is not None and not group_alive(proc.pid):
                return
            time.sleep(0.1)


def group_alive(pgid: int) -> bool:
    """Whether a process of group ``pgid`` still runs (a zombie does not: it waits for a parent,
    perhaps a subreaper such as pytest, to collect it)."""
    if not Path("/proc/self/stat").exists():  # not Linux: any member, zombies included
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        return True
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, _ppid, group = stat.read_text().rsplit(")", 1)[1].split()[:3]
        except (OSError, ValueError):
            continue  # gone meanwhile
        if int(group) == pgid and state != "Z":
            return True
    return False


def tail(path: Path) -> str:
    try:
        return path.read_text(errors="replace")[-TAIL_CHARS:]
    except OSError:
        return ""


# ---- reading each command's figures -----------------------------------------------------------------------


def read_junit(path: Path) -> dict:
    """Counts and each test's outcome (and skip / failure message) from pytest's JUnit XML."""
    tests: dict[str, dict] = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        nodeid = f"{case.get('classname', '')}::{case.get('name', '')}"
        outcome, message = "passed", None
        for tag in ("failure", "error", "skipped"):
            child = case.find(tag)
            if child is not None:
                outcome = {"failure": "failed"}.get(tag, tag)
                message = (child.get("message") or child.text or "").strip()[:300]
                break
        tests[nodeid] = {"outcome": outcome, **({"message": message} if message else {})}
    counts = {k: sum(t["outcome"] == k for t in tests.values()) for k in ("passed", "failed", "error", "skipped")}
    return {"counts": counts, "tests": tests}


def dig(data, *keys):
    """``data[k1][k2]...``, or None where a level is missing (other scripts' JSON may change)."""
    for key in keys:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def read_result(job: Job, rc: int) -> dict:
    """The job's figures and status from what it wrote; raises on a missing or unreadable file."""
    if job.section == "gpu_tests":
        result = read_junit(job.output)
        counts = result["counts"]
        if counts["failed"] or counts["error"]:
            bad = [n for n, t in result["tests"].items() if t["outcome"] in ("failed", "error")]
            return {"status": "failed", "reason": f"{len(bad)} test(s) failed: {', '.join(bad[:5])}", **result}
        if not counts["passed"]:
            reasons = sorted({t.get("message", "") for t in result["tests"].values()})
            return {"status": "skipped", "reason": "no GPU test ran: " + ("; ".join(reasons)[:300] or
                                                                          "none selected"), **result}
        return {"status": "ok" if rc == 0 else "failed", **result}
    data = json.loads(job.output.read_text())
    if job.section == "attention":
        backends: dict[str, dict] = {}
        for row in data["results"]:
            entry = {k: v for k, v in row.items() if k not in ("backend", "seq_len")}
            backends.setdefault(row["backend"], {})[str(row["seq_len"])] = entry
        entries = [e for sizes in backends.values() for e in sizes.values()]
        errors = sorted({e["error"] for e in entries if "error" in e})
        skips = sorted({e["skipped"] for e in entries if "skipped" in e})
        if errors:  # accepted the setup, then failed (out of memory, a kernel error): the figures that ran stay
            status, reason = "failed", "; ".join(errors)
        else:
            status, reason = ("ok", None) if any("tflops" in e for e in entries) else ("skipped", "; ".join(skips))
        return {"status": status, **({"reason": reason} if reason else {}),
                "device": data.get("device"), "args": data.get("args"), "backends": backends}
    return {"status": "ok", "figures": data}


def summarize(section: str, jobs: dict[str, dict]) -> dict:
    """A section's status from its jobs': ok if every job that ran succeeded, partial if some
    failed and some succeeded, failed if none succeeded, skipped if none ran."""
    statuses = [j["status"] for j in jobs.values()]
    ran = [s for s in statuses if s != "skipped"]
    if not ran:
        status = "skipped"
    elif all(s == "ok" for s in ran):
        status = "ok"
    elif any(s == "ok" for s in ran):
        status = "partial"
    else:
        status = "failed"
    out = {"status": status, "elapsed_s": round(sum(j.get("elapsed_s", 0.0) for j in jobs.values()), 2)}
    reasons = sorted({j["reason"] for j in jobs.values() if j.get("reason")})
    if status == "skipped" and reasons:
        out["reason"] = "; ".join(reasons)
    return {**out, "jobs": jobs}


def headline(sections: dict) -> dict:
    """The figures one reads first, flat: MFU, attention TFLOP/s, decode tokens/s, test counts."""
    figures: dict[str, float | int | None] = {}
    for name, job in sections.get("mfu", {}).get("jobs", {}).items():
        if job["status"] == "ok":
            figures[f"mfu/{name}"] = dig(job, "figures", "mfu")
            figures[f"mfu/{name}/tokens_per_s"] = dig(job, "figures", "tokens_per_s")
            figures[f"mfu/{name}/tflops_per_s"] = dig(job, "figures", "tflops_per_s")
    for job in sections.get("attention", {}).get("jobs", {}).values():
        for backend, sizes in (job.get("backends") or {}).items():
            for seq, entry in sizes.items():
                if isinstance(entry, dict) and "tflops" in entry:
                    figures[f"attention/{backend}/{seq}/tflops"] = entry["tflops"]
    for name, job in sections.get("decode", {}).get("jobs", {}).items():
        rows = dig(job, "figures", "results") if job["status"] == "ok" else None
        for row in rows if isinstance(rows, list) else []:  # generate.py: one row per batch size
            figures[f"decode/{name}/tokens_per_s"] = dig(row, "runners", "ours", "tokens_per_s", "best")
            figures[f"decode/{name}/transformers_tokens_per_s"] = dig(row, "runners", "transformers", "tokens_per_s",
                                                                      "best")
            figures[f"decode/{name}/ours_vs_transformers"] = dig(row, "ours_vs_transformers", "best")
    for outcome, n in (dig(sections, "gpu_tests", "jobs", "pytest", "counts") or {}).items():
        figures[f"gpu_tests/{outcome}"] = n
    return figures


# ---- the suite ---------------------------------------------------------------------------------------------


class Suite:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.start = time.perf_counter()
        self.deadline = self.start + args.budget_s
        self.result: dict = {
            "suite": "gpu_suite", "schema": 1, "mode": "cpu-smoke" if args.cpu_smoke else "gpu",
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "budget_s": args.budget_s,
            "elapsed_s": 0.0, "device": None, "versions": None, "sections": {}, "figures": {}, "ok": None,
        }
        self.env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=os.pathsep.join(
            [str(ROOT), str(BENCH), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]))

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def write(self) -> None:
        sections = self.result["sections"]
        self.result["elapsed_s"] = round(time.perf_counter() - self.start, 2)
        self.result["figures"] = headline(sections)
        self.result["ok"] = (all(s["status"] in ("ok", "skipped") for s in sections.values())
                             and not self.result.get("stopped"))
        out = self.args.out
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps(self.result, indent=2) + "\n")
        os.replace(tmp, out)  # a reader (or a kill) never sees half a file

    def say(self, line: str) -> None:
        print(f"[gpu_suite {time.perf_counter() - self.start:6.1f}s] {line}", flush=True)

    def install(self, work: Path) -> dict:
        start = time.perf_counter()
        todo = install_plan(installed_distributions(), self.args.wheels, self.args.torch_version)
        commands, notes = todo["commands"], todo["notes"]
        if not commands:
            return {"status": "skipped", "reason": "every package the suite needs is installed already",
                    "notes": notes, "elapsed_s": round(time.perf_counter() - start, 2)}
        out = {"missing": todo["missing"], "commands": [" ".join(c) for c in commands], "notes": notes}
        needs_wheels = any("--find-links" in c for c in commands)
        if needs_wheels and self.args.wheels is None:
            return {**out, "status": "failed", "elapsed_s": round(time.perf_counter() - start, 2),
                    "reason": f"not installed: {', '.join(todo['missing'])}; pass --wheels DIR with their wheels"}
        for i, cmd in enumerate(commands):
            self.say("install: " + " ".join(cmd[3:]))
            log = work / f"install-{i}.log"
            rc, _ = run_process(cmd, max(self.left() - 240, 60), log, self.env)
            if rc != 0:
                return {**out, "status": "timeout" if rc is None else "failed",
                        "elapsed_s": round(time.perf_counter() - start, 2),
                        "reason": f"{' '.join(cmd[3:6])}... exited {rc}", "log_tail": tail(log)}
        return {**out, "status": "ok", "elapsed_s": round(time.perf_counter() - start, 2)}

    def run_job(self, job: Job, later: list[Job], work: Path) -> dict:
        if job.skipped:
            return {"status": "skipped", "reason": job.skipped, "elapsed_s": 0.0, "command": " ".join(job.cmd)}
        reserve = sum(j.floor for j in later if not j.skipped)
        limit = min(job.timeout, self.left() - reserve)
        if limit < min(job.floor, job.timeout):
            return {"status": "skipped", "elapsed_s": 0.0,
                    "reason": f"not started: {max(self.left(), 0):.0f} s left of the suite's budget, "
                              f"{reserve:.0f} s kept for the measurements after it"}
        log = work / f"{job.section}-{job.name.replace('/', '-')}.log"
        self.say(f"{job.section} {job.name} (limit {limit:.0f} s)")
        rc, seconds = run_process(job.cmd, limit, log, self.env)
        entry: dict = {"elapsed_s": round(seconds, 2), "limit_s": round(limit, 1), "command": " ".join(job.cmd)}
        if rc is None:
            return {**entry, "status": "timeout", "reason": f"ran past its {limit:.0f} s limit",
                    "log_tail": tail(log)}
        try:
            result = read_result(job, rc)
        except (OSError, ValueError, KeyError, ET.ParseError) as err:
            return {**entry, "status": "failed", "reason": f"exited {rc}; no readable output ({err})",
                    "log_tail": tail(log)}
        if rc != 0 and not (job.section == "gpu_tests" and rc in (1, 5)):  # 1: tests failed, 5: none ran
            result["status"] = "failed"
        if result["status"] == "failed":
            entry["log_tail"] = tail(log)
            result.setdefault("reason", f"exited {rc}")
        return {**entry, **result}

    def run(self) -> dict:
        with tempfile.TemporaryDirectory(prefix="gpu_suite-") as tmp:
            work = self.args.logs or Path(tmp)
            work.mkdir(parents=True, exist_ok=True)
            try:
                self.run_in(work)
            except Stopped as stop:  # while installing or probing (the jobs' loop records its own)
                self.result["stopped"] = str(stop)
        self.write()
        return self.result

    def run_in(self, work: Path) -> None:
        args = self.args
        sections = self.result["sections"]
        if "install" in args.sections:
            self.say("install")
            sections["install"] = self.install(work)
            self.write()
        self.say("probe: device and versions")
        found_at = work / "probe.json"
        rc, _ = run_process([sys.executable, __file__, "--probe", "--out", str(found_at)],
                            min(120, max(self.left(), 20)), work / "probe.log", self.env)
        try:
            found = json.loads(found_at.read_text())
        except (OSError, ValueError):
            found = {"versions": None, "device": {"cuda": False, "name": None,
                                                  "reason": f"the probe exited {rc}: {tail(work / 'probe.log')}"}}
        self.result["device"], self.result["versions"] = found["device"], found["versions"]
        jobs = plan(args, work)
        if not found["device"].get("cuda") and not args.cpu_smoke:
            why = found["device"].get("reason", "no CUDA device")
            for job in jobs:
                job.skipped = f"{why} (--cpu-smoke runs the suite on a CPU at tiny sizes)"
        done: dict[str, dict[str, dict]] = {}
        i = 0
        try:
            for i, job in enumerate(jobs):
                done.setdefault(job.section, {})[job.name] = self.run_job(job, jobs[i + 1:], work)
                sections[job.section] = summarize(job.section, done[job.section])
                self.say(f"{job.section} {job.name}: {done[job.section][job.name]['status']}")
                self.write()
        except Stopped as stop:  # the job's process group is gone already (run_process's finally)
            self.result["stopped"] = str(stop)
            for k, job in enumerate(jobs[i:]):
                done.setdefault(job.section, {})[job.name] = (
                    {"status": "timeout", "reason": f"the suite was stopped by {stop} while it ran"} if k == 0 else
                    {"status": "skipped", "reason": f"not started: the suite was stopped by {stop}"})
                sections[job.section] = summarize(job.section, done[job.section])


class Stopped(Exception):
    """SIGTERM or SIGINT reached the suite (``timeout`` in gpu_suite.sh, a user's Ctrl-C)."""


def stop_on_signals() -> None:
    """Turn SIGTERM / SIGINT into ``Stopped``, so the measurement running then is ended with its
    process group (it runs in a session of its own, which a signal to the suite does not reach)
    and the JSON says what happened, rather than leaving a GPU job running after the suite."""
    def handler(signum, _frame):
        raise Stopped(signal.Signals(signum).name)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, handler)


def main(argv=None) -> int:
    args = parse(argv)
    if args.probe:
        args.out.write_text(json.dumps(probe()))
        return 0
    stop_on_signals()
    result = Suite(args).run()
    for name, section in result["sections"].items():
        print(f"{name:<10} {section['status']:<8} {section['elapsed_s']:7.1f} s  {section.get('reason', '')}")
    for key, value in result["figures"].items():
        print(f"  {key:<40} {value:.4g}" if isinstance(value, float) else f"  {key:<40} {value}")
    print(f"wrote {args.out} ({result['elapsed_s']:.0f} s)" + (f"; stopped by {result['stopped']}"
                                                                if result.get("stopped") else ""))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
