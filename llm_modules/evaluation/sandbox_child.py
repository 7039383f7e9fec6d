"""The sandbox's child side: run by ``python -I -S`` in a fresh process (llm_modules.evaluation.sandbox),
never imported by llm-modules itself. Standard library only, because isolated mode sees no site-packages.

It reads one JSON line from stdin (the program, the temporary folder, the limits and a one-off nonce),
lowers its resource limits, installs an audit hook that refuses the network, new processes, native
code and writes outside the folder, then runs the program in a namespace of its own. The verdict goes
to the report descriptor as ``NONCE STATUS REASON``: a program that exits early or prints a fake
verdict cannot know the nonce, so anything without it counts as a failure.

The audit hook is a guard against programs that misbehave, not a security boundary on its own (Python
cannot promise one); the separate process, the resource limits, the network namespace and the
unprivileged user (where the parent can provide them) are the barriers.
"""

import json
import os
import resource
import sys

# Modules a program under test never needs and that reach the network, other processes or native
# code. Refused at import (the audit hook's "import" event) as well as through their own events.
_REFUSED_MODULES = frozenset({
    "socket", "_socket", "ssl", "_ssl", "asyncio", "selectors", "http", "urllib", "ftplib", "smtplib",
    "subprocess", "_posixsubprocess", "multiprocessing", "_multiprocessing", "concurrent", "pty",
    "ctypes", "_ctypes", "cffi", "mmap",
})
# Audit events refused whatever their arguments (prefixes): the network, new processes, signals to
# others, native code. Frame and gc introspection stay allowed: the standard library itself uses them
# (collections, functools, enum), which is also why the hook is a guard and not a boundary.
_REFUSED_EVENTS = (
    "socket.", "subprocess.", "os.exec", "os.spawn", "os.posix_spawn", "os.fork", "os.forkpty",
    "os.system", "os.kill", "os.killpg", "os.setuid", "os.setgid", "os.chroot", "ctypes.", "cpython.",
    "pty.", "mmap.", "resource.setrlimit", "resource.prlimit", "sys.remote_exec",
)
# Audit events whose path arguments (these positions) must lie inside the folder.
_PATH_EVENTS = {
    "os.remove": (0,), "os.rename": (0, 1), "os.mkdir": (0,), "os.rmdir": (0,), "os.symlink": (0, 1),
    "os.link": (0, 1), "os.chmod": (0,), "os.chown": (0,), "os.truncate": (0,), "os.utime": (0,),
    "os.setxattr": (0,), "os.removexattr": (0,), "shutil.copyfile": (1,), "shutil.copytree": (1,),
    "shutil.rmtree": (0,), "shutil.move": (1,), "shutil.make_archive": (0,), "os.mkfifo": (0,),
    "os.mknod": (0,), "os.chflags": (0,), "sqlite3.connect": (0,), "dbm.open": (0,),
}
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def _limit(kind: int, soft: int, hard: int | None = None) -> None:
    """Lower one resource limit (never above the hard limit this process inherited)."""
    _, inherited = resource.getrlimit(kind)
    hard = soft if hard is None else hard
    if inherited != resource.RLIM_INFINITY:
        soft, hard = min(soft, inherited), min(hard, inherited)
    resource.setrlimit(kind, (soft, hard))


def _set_limits(spec: dict) -> None:
    memory = int(spec["memory_bytes"])
    for kind in (resource.RLIMIT_AS, resource.RLIMIT_DATA):
        _limit(kind, memory)
    # CPU: SIGXCPU (ends the process: no handler is installed) at the soft limit, SIGKILL one second on.
    cpu = int(spec["cpu_seconds"])
    _limit(resource.RLIMIT_CPU, cpu, cpu + 1)
    _limit(resource.RLIMIT_FSIZE, int(spec["file_bytes"]))
    _limit(resource.RLIMIT_CORE, 0)  # SIGXCPU would otherwise dump core into the folder
    _limit(resource.RLIMIT_NOFILE, 64)
    _limit(resource.RLIMIT_NPROC, 1)  # no new processes or threads (root is exempt: the hook still refuses)


def _guard(root: str, refuse) -> None:
    """Install the audit hook; ``refuse(reason)`` reports and ends the process."""
    realpath, fsdecode, sep = os.path.realpath, os.fsdecode, os.sep

    def inside(path) -> bool:
        if isinstance(path, int):  # an open descriptor: ours (stdout, stderr, the report) or the program's
            return True
        try:
            full = realpath(fsdecode(path))
        except (TypeError, ValueError):
            return False
        return full == root or full.startswith(root + sep)

    def hook(event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = args
            writing = (mode is not None and any(c in mode for c in "wax+")) or bool((flags or 0) & _WRITE_FLAGS)
            if writing and not inside(path):
                refuse(f"write outside the sandbox folder: {path!r}")
        elif event == "import":
            if args[0].partition(".")[0] in _REFUSED_MODULES:
                refuse(f"import {args[0]}")
        elif event.startswith(_REFUSED_EVENTS):
            refuse(event)
        elif event in _PATH_EVENTS:
            for i in _PATH_EVENTS[event]:
                if i < len(args) and not inside(args[i]):
                    refuse(f"{event} outside the sandbox folder: {args[i]!r}")

    sys.addaudithook(hook)


def main() -> None:
    spec = json.loads(sys.stdin.readline())
    report_fd, nonce = int(spec["report_fd"]), spec["nonce"]

    def report(status: str, reason: str = "") -> None:
        line = f"{nonce} {status} {reason}".replace("\n", " ")[:400] + "\n"
        os.write(report_fd, line.encode("utf-8", "replace"))
        os._exit(0)

    root = os.path.realpath(spec["root"])
    os.chdir(root)
    source = spec["source"]
    code = compile(source, "<program>", "exec")
    memory_line = f"{nonce} memory allocation beyond the memory limit\n".encode()
    _set_limits(spec)
    _guard(root, lambda reason: report("refused", reason))
    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    try:
        exec(code, namespace)
    except MemoryError:
        namespace.clear()
        os.write(report_fd, memory_line)
        os._exit(0)
    except BaseException as error:  # noqa: BLE001 - every way a program can fail is a failure
        namespace.clear()
        report("failed", f"{type(error).__name__}: {error}"[:300])
    report("passed")


if __name__ == "__main__":
    main()
