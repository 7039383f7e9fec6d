"""Start a benchmark's ranks as gloo processes on this machine and collect what each reports.

Shared by the pipeline benchmarks (``pipeline_bubble.py``, ``pipeline_memory.py``): each reruns its
own script once per rank with ``--rank R --port P --out FILE`` added, one thread per process, and
each rank writes a JSON list of rows to its FILE.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_ranks(script: str, ranks: int, forwarded: list[str], timeout: float) -> list[dict]:
    """Run ``script`` as ``ranks`` processes with ``forwarded`` arguments; every rank's rows. A rank
    that fails or outlives ``timeout`` stops them all."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    with tempfile.TemporaryDirectory() as tmp:
        outs = [Path(tmp) / f"rank{r}.json" for r in range(ranks)]
        procs = [
            subprocess.Popen(
                [sys.executable, script, *forwarded, "--rank", str(r), "--port", str(port), "--out", str(out)],
                env=env, start_new_session=True,
            )
            for r, out in enumerate(outs)
        ]
        try:
            for proc in procs:
                proc.wait(timeout=timeout)
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        if any(proc.returncode for proc in procs):
            raise SystemExit(f"a rank failed: exit codes {[proc.returncode for proc in procs]}")
        return [row for out in outs for row in json.loads(out.read_text())]


def add_rank_arguments(parser: argparse.ArgumentParser) -> None:
    """The hidden arguments ``run_ranks`` gives each rank's process (set: this process is a rank)."""
    parser.add_argument("--rank", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
