"""The suite's guard against processes left behind (``_leftover_processes``, used by conftest)."""

from __future__ import annotations

import subprocess
import sys
import time

import psutil

from _leftover_processes import become_subreaper, descendants, reap_leftovers

# A child that starts a grandchild sleeping for a minute and exits at once: the grandchild is an orphan.
ORPHANING = (
    "import subprocess, sys\n"
    "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'],\n"
    "                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
    "print(p.pid, flush=True)\n"
)


def test_an_orphaned_grandchild_is_found_and_killed():
    assert become_subreaper(), "this platform cannot adopt orphans; the guard would miss them"
    before = set(descendants())
    child = subprocess.run([sys.executable, "-c", ORPHANING], capture_output=True, text=True, timeout=60)
    orphan = int(child.stdout.split()[0])
    assert orphan in descendants(), "the orphan was not re-parented to this process"
    start = time.monotonic()
    killed = reap_leftovers(before, grace=0.5)
    assert len(killed) == 1 and killed[0].startswith(f"pid {orphan}:") and "time.sleep(60)" in killed[0]
    assert not psutil.pid_exists(orphan) or psutil.Process(orphan).status() == psutil.STATUS_ZOMBIE
    assert time.monotonic() - start < 30


def test_processes_that_end_within_the_grace_period_are_not_reported():
    before = set(descendants())
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.3)"])
    assert reap_leftovers(before, grace=20) == []
    proc.wait(timeout=5)  # the guard may have collected its status already; the wait must not hang
    assert proc.pid not in descendants()
