"""Shared by the end-to-end training tests: a tiny corpus, overrides that shrink a shipped YAML to
seconds, and a launcher for runs that need their own process (DDP and friends re-execute the
command line, so they cannot run inside pytest's process)."""

from __future__ import annotations

import contextlib
import csv
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs"

SNIPPETS = [
    "def add(a, b):\n    return a + b\n",
    "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n",
    "for i in range(10):\n    print(i * i)\n",
    "import os\nprint(os.path.join('a', 'b'))\n",
]


def write_corpus(root: Path, files: int = 40) -> Path:
    """A folder of small Python-like files: enough documents for a train/validation split."""
    root.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        body = "".join(SNIPPETS[(i + j) % len(SNIPPETS)] for j in range(6))
        (root / f"mod{i:02d}.py").write_text(f"# module {i}\n{body}")
    return root


def tiny(config: Path, corpus: Path, cache: Path, *extra: str, steps: int = 30) -> list[str]:
    """Overrides that shrink a shipped YAML to seconds: tiny model, tiny corpus, a few steps."""
    args = [
        "--config", str(config),
        "--data.init_args.paths", f"[{corpus}]",
        "--data.init_args.cache_dir", str(cache),
        "--data.init_args.vocab_size", "320",
        "--data.init_args.num_sentinels", "8",
        "--data.init_args.seq_len", "32",
        "--data.init_args.batch_size", "8",
        "--data.init_args.val_fraction", "0.2",
        "--model.init_args.config.vocab_size", "320",
        "--model.init_args.config.d_model", "32",
        "--model.init_args.config.n_heads", "4",
        "--model.init_args.config.max_seq_len", "64",
        "--model.init_args.optim.lr", "3e-3",
        "--model.init_args.optim.warmup_steps", "5",
        "--trainer.max_steps", str(steps),
        "--trainer.val_check_interval", str(steps),
        "--trainer.limit_val_batches", "2",
        "--trainer.num_sanity_val_steps", "2",
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
    ]
    if "n_kv_heads" in config.read_text():
        args += ["--model.init_args.config.n_kv_heads", "4"]
    return args + list(extra)


def metric_rows(run_dir: Path, key: str) -> list[tuple[int, float]]:
    """(step, value) of every row of the run's metrics.csv that has ``key``."""
    with open(run_dir / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get(key)]
    return [(int(r["step"]), float(r[key])) for r in rows]


def val_losses(run_dir: Path) -> list[tuple[int, float]]:
    return metric_rows(run_dir, "val/loss")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args: list[str], cwd: Path, env: dict[str, str] | None = None, wait: bool = True,
           timeout: float = 300):
    """``python -m llm_modules ARGS`` in ``cwd``, one thread per process, with ``env`` added.

    With ``wait`` (default) returns the CompletedProcess and fails the test with the output on a
    non-zero exit; otherwise returns the Popen (the caller waits, then ``reap``s it).
    The process leads a process group of its own (with whatever it starts: DDP ranks, data workers),
    so that ``reap`` ends all of it, and a wait that times out kills the whole group rather than
    leaving a rank behind that holds the output pipe open.
    """
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    cmd = [sys.executable, "-m", "llm_modules", *args]
    proc = subprocess.Popen(cmd, cwd=cwd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    if not wait:
        return proc
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        reap(proc)
    assert proc.returncode == 0, f"exit {proc.returncode}:\n{out[-6000:]}"
    return subprocess.CompletedProcess(cmd, proc.returncode, out)


@contextlib.contextmanager
def deterministic_flags_restored() -> Iterator[None]:
    """``--trainer.deterministic true`` switches torch to deterministic algorithms (and sets a cuBLAS
    variable) for the whole process; a fit run in this one must not leave that to the tests after it."""
    import torch

    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
              torch.backends.cudnn.benchmark, os.environ.get("CUBLAS_WORKSPACE_CONFIG"))
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.backends.cudnn.benchmark = before[2]
        if before[3] is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        else:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = before[3]


def fit_here(args: list[str], cwd: Path) -> None:
    """``llm-modules ARGS`` in this process, in ``cwd``: for the runs a test compares with, where the
    process is not what the test is about (a process start costs seconds of imports). Such a run ends
    bitwise where the same command in a fresh process ends (one thread each: tests/conftest.py)."""
    import pytest

    from llm_modules.cli import main

    with pytest.MonkeyPatch.context() as patch, deterministic_flags_restored():
        patch.chdir(cwd)
        assert main(args) == 0, f"llm-modules {' '.join(args[:1])} exited non-zero in {cwd}"


def reap(proc: subprocess.Popen, timeout: float = 30) -> None:
    """Kill ``proc``'s process group (it and everything it started) and collect its exit status.

    Reading what is left of the output is bounded too: a process outside the group (a daemon that
    started a session of its own) could otherwise hold the pipe open for ever.
    """
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired, ValueError, OSError):
        proc.communicate(timeout=timeout)
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=timeout)
