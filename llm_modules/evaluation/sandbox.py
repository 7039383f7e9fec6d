"""Run an untrusted program (a model's code plus its unit tests) in a sandbox, never in our process.

``run_program(source)`` starts ``python -I -S`` (isolated mode: no site-packages, no user site, no
PYTHON* variables) on llm_modules/evaluation/sandbox_child.py in a new session, with

- a fresh temporary folder as its working directory, HOME and TMPDIR, removed afterwards, and an
  otherwise empty environment;
- a wall-time limit (the whole process group is killed when it passes) and, set by the child before
  the program runs, CPU-time, address-space/data, file-size, open-file and process-count limits;
- no network: a new user and network namespace (``unshare --user --map-root-user --net``) where the
  kernel lets an unprivileged process make one (probed once per process), and in every case an audit
  hook in the child that refuses sockets, new processes, ctypes and writes outside the folder;
- when we run as root, an unprivileged user (nobody) where that user can run our interpreter (probed).

The verdict is an ``Outcome``: passed, failed, timeout, memory or refused, with a short reason.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

CHILD = Path(__file__).with_name("sandbox_child.py")
STATUSES = ("passed", "failed", "timeout", "memory", "refused")
NOBODY = 65534


class SandboxError(RuntimeError):
    """The sandbox itself could not run a program (not a verdict on the program)."""


@dataclass(frozen=True)
class Outcome:
    """What became of one program: ``status`` is one of STATUSES; ``folder`` is the temporary folder it
    ran in (already removed)."""

    status: str
    reason: str = ""
    folder: str = ""

    @property
    def passed(self) -> bool:
        return self.status == "passed"


@dataclass(frozen=True)
class Isolation:
    """How this machine lets us isolate a child: the command prefix and the user to run it as."""

    prefix: tuple[str, ...]
    user: int | None

    @property
    def network_namespace(self) -> bool:
        return bool(self.prefix)


def _unshare_prefix() -> tuple[str, ...]:
    tool = shutil.which("unshare")
    return (tool, "--user", "--map-root-user", "--net", "--") if tool else ()


@functools.lru_cache(maxsize=1)
def isolation() -> Isolation:
    """The strongest isolation that works here, probed once: a network namespace and, as root, the
    nobody user, each only where a child with it can actually start our interpreter."""
    prefixes = dict.fromkeys([_unshare_prefix(), ()])  # the namespace first; () once if unshare is missing
    users: list[int | None] = [NOBODY, None] if os.geteuid() == 0 else [None]
    candidates = [Isolation(p, u) for u in users for p in prefixes]
    for candidate in candidates:
        if _probe(candidate):
            return candidate
    return Isolation((), None)


def _probe(candidate: Isolation) -> bool:
    check = f"import resource; compile(open({str(CHILD)!r}).read(), 'child', 'exec')"  # readable, and this Python's
    cmd = [*candidate.prefix, sys.executable, "-I", "-S", "-c", check]
    try:
        done = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, env=_environment("/"), timeout=20,
                              **_user_kwargs(candidate.user))
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


def _user_kwargs(user: int | None) -> dict:
    return {} if user is None else {"user": user, "group": user, "extra_groups": []}


def _environment(folder: str) -> dict[str, str]:
    return {"HOME": folder, "TMPDIR": folder, "PATH": os.defpath, "LANG": "C.UTF-8"}


def run_program(source: str, *, timeout: float = 5.0, memory_mb: int = 512, file_mb: int = 16,
                cpu_seconds: int | None = None) -> Outcome:
    """Run ``source`` (a program and its tests, as one Python text) in the sandbox and say how it went.

    ``timeout``: wall seconds before the process group is killed; ``cpu_seconds``: CPU limit (default:
    the timeout rounded up); ``memory_mb``: address-space limit; ``file_mb``: largest file it may write.
    """
    how = isolation()
    folder = tempfile.mkdtemp(prefix="llm-modules-sandbox-")
    try:
        if how.user is not None:
            os.chown(folder, how.user, how.user)
        return _run_in(folder, source, how, timeout, memory_mb, file_mb,
                       cpu_seconds or max(1, math.ceil(timeout)))
    finally:
        _remove(folder)


def _run_in(folder: str, source: str, how: Isolation, timeout: float, memory_mb: int, file_mb: int,
            cpu_seconds: int) -> Outcome:
    nonce = secrets.token_hex(16)
    read_end, write_end = os.pipe()
    spec = {"source": source, "root": folder, "nonce": nonce, "report_fd": write_end,
            "memory_bytes": memory_mb << 20, "file_bytes": file_mb << 20, "cpu_seconds": cpu_seconds}
    out_path, err_path = os.path.join(folder, ".stdout"), os.path.join(folder, ".stderr")
    try:
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            proc = subprocess.Popen([*how.prefix, sys.executable, "-I", "-S", str(CHILD)], stdin=subprocess.PIPE,
                                    stdout=out, stderr=err, pass_fds=(write_end,), cwd=folder,
                                    env=_environment(folder), start_new_session=True, **_user_kwargs(how.user))
        os.close(write_end)
        write_end = -1
        timed_out = False
        try:
            with contextlib.suppress(BrokenPipeError):  # a child that died at once: judged below
                proc.communicate((json.dumps(spec) + "\n").encode(), timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            _kill_group(proc)
        verdict = _read_report(read_end, nonce)
        if timed_out:
            return Outcome("timeout", f"still running after {timeout:g} s (wall time)", folder)
        if verdict is not None:
            status, _, reason = verdict.partition(" ")
            return Outcome(status if status in STATUSES else "failed", reason, folder)
        return Outcome(*_without_verdict(proc.returncode, err_path, cpu_seconds), folder)
    finally:
        for fd in (read_end, write_end):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)


def _kill_group(proc: subprocess.Popen) -> None:
    """Kill the child's whole process group (anything it started too) and reap the child."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


def _read_report(fd: int, nonce: str) -> str | None:
    """The child's verdict (after the nonce), read without blocking: the child is gone by now, but a
    stray descendant could still hold the pipe open."""
    os.set_blocking(fd, False)
    data = b""
    with contextlib.suppress(BlockingIOError, OSError):
        while len(data) < 1 << 16 and (chunk := os.read(fd, 4096)):
            data += chunk
    for line in data.decode("utf-8", "replace").splitlines():
        if line.startswith(nonce + " "):
            return line[len(nonce) + 1:]
    return None


def _without_verdict(returncode: int, err_path: str, cpu_seconds: int) -> tuple[str, str]:
    """A child that ended without a verdict: killed by a limit, crashed, or left early on purpose."""
    if returncode == -signal.SIGXCPU:
        return "timeout", f"CPU time limit of {cpu_seconds} s"
    if returncode == -signal.SIGKILL:
        return "failed", "killed (SIGKILL): the CPU hard limit or the kernel's out-of-memory killer"
    tail = _last_line(err_path)
    if tail.startswith("unshare:"):  # the namespace could not be made: no verdict on the program at all
        raise SandboxError(f"the sandbox could not start ({tail}); is the user-namespace limit reached?")
    if "MemoryError" in tail:
        return "memory", tail
    return "failed", f"exited ({returncode}) without finishing its tests" + (f": {tail}" if tail else "")


def _last_line(path: str, most: int = 300) -> str:
    """The last line of what the child wrote to stderr (its end only: the file may be large)."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - most))
            lines = f.read().decode("utf-8", "replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1] if lines else ""


def _remove(folder: str) -> None:
    """Remove the folder whatever the program did to its permissions."""
    def retry(function, path, _exc):
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(path), 0o700)
            os.chmod(path, 0o700)
        with contextlib.suppress(OSError):
            function(path)

    shutil.rmtree(folder, **({"onexc": retry} if sys.version_info >= (3, 12) else {"onerror": retry}))
