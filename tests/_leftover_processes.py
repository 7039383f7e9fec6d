"""No test leaves a process behind.

Each pytest process makes itself a *child subreaper* (Linux ``prctl(PR_SET_CHILD_SUBREAPER)``): a process
orphaned by a test (a DDP rank whose launcher was killed) is re-parented to pytest instead of to init, so
it is still found among pytest's descendants. After each test module (module-scoped fixtures, such as a
family of training runs, end with the module), the descendants that were not there before are given a
few seconds to exit, then killed; the module fails naming them. The multiprocessing helpers that live as
long as the interpreter (the resource tracker, a forkserver, torch.compile's worker pool) are not a test's leftovers.
"""

from __future__ import annotations

import ctypes
import os
import signal
import time

import psutil

PR_SET_CHILD_SUBREAPER = 36
INTERPRETER_HELPERS = ("multiprocessing.resource_tracker", "multiprocessing.forkserver", "multiprocess.resource_tracker",
                       "multiprocess.forkserver", "torch._inductor.compile_worker")


def become_subreaper() -> bool:
    """Adopt orphaned descendants (Linux); False where the system has no such notion."""
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _is_helper(proc: psutil.Process) -> bool:
    try:
        return any(name in " ".join(proc.cmdline()) for name in INTERPRETER_HELPERS)
    except psutil.Error:
        return True  # gone already


def descendants() -> dict[int, psutil.Process]:
    """This process's living descendants that are not interpreter helpers, by pid."""
    return {p.pid: p for p in psutil.Process().children(recursive=True) if not _is_helper(p)}


def reap_leftovers(before: set[int], grace: float = 5.0) -> list[str]:
    """Kill the descendants that are not in ``before`` and still run after ``grace`` seconds; collect
    every zombie child. Returns a description of each process that had to be killed."""
    deadline = time.monotonic() + grace
    while True:
        _collect_zombies()
        left = [p for pid, p in descendants().items() if pid not in before and _running(p)]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    killed = []
    for proc in left:
        try:
            killed.append(f"pid {proc.pid}: {' '.join(proc.cmdline())[:200]}")
            proc.send_signal(signal.SIGKILL)
        except psutil.Error:
            continue
    psutil.wait_procs(left, timeout=10)
    _collect_zombies()
    return killed


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _collect_zombies() -> None:
    """Wait for exited children: orphans adopted as subreaper have no Popen object to do it. A Popen
    whose child is collected here reads the exit status as unknown, which only matters for a process
    the test never waited for."""
    for proc in psutil.Process().children():
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                os.waitpid(proc.pid, os.WNOHANG)
        except (psutil.Error, ChildProcessError):
            continue
