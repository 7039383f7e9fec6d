"""The sandbox (llm_modules.evaluation.sandbox) runs a program and its tests in another process: a correct
program passes, a wrong one fails, and a program that loops, allocates without bound, tries the network,
writes outside its folder or starts processes is stopped and counted as a failure, with nothing left
behind: not the files it tried to write, not its temporary folder, not a process."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from llm_modules.evaluation.sandbox import isolation, run_program

LIMITS = {"timeout": 1.5, "memory_mb": 256}


def run(source: str, **limits):
    outcome = run_program(source, **{**LIMITS, **limits})
    assert outcome.folder and not os.path.exists(outcome.folder), "the temporary folder must be gone"
    return outcome


def test_a_correct_program_passes_and_its_folder_is_removed():
    outcome = run("def inc(x):\n    return x + 1\n\nassert inc(1) == 2\nassert inc(-1) == 0\n")
    assert outcome.status == "passed" and outcome.passed


def test_a_wrong_program_fails_with_the_reason():
    outcome = run("def inc(x):\n    return x\n\nassert inc(1) == 2, 'inc(1)'\n")
    assert outcome.status == "failed" and not outcome.passed
    assert "AssertionError" in outcome.reason and "inc(1)" in outcome.reason


def test_a_syntax_error_or_an_early_exit_fails():
    assert run("def f(:\n").status == "failed"
    assert run("import sys\nsys.exit(0)\nassert False\n").status == "failed"
    # leaving without the verdict (os._exit skips the child's report) is no pass either
    assert run("import os\nos._exit(0)\nassert False\n").status == "failed"


def test_an_endless_loop_is_stopped_by_the_wall_time_limit():
    start = time.monotonic()
    outcome = run("while True:\n    pass\n", timeout=1.0)
    assert outcome.status == "timeout" and time.monotonic() - start < 5


def test_a_busy_loop_is_stopped_by_the_cpu_limit():
    outcome = run("while True:\n    pass\n", timeout=10, cpu_seconds=1)
    assert outcome.status == "timeout" and "CPU" in outcome.reason


def test_unbounded_allocation_is_stopped_and_our_process_is_fine():
    outcome = run("chunks = []\nwhile True:\n    chunks.append(bytearray(1 << 20))\n")
    assert outcome.status == "memory" and not outcome.passed
    assert len(bytearray(64 << 20)) == 64 << 20  # we can still allocate


@pytest.mark.parametrize("source", [
    "import socket\nsocket.create_connection(('127.0.0.1', 9))\n",
    "s = __import__('_socket').socket()\n",
])
def test_the_network_is_refused(source):
    outcome = run(source)
    assert outcome.status == "refused" and "socket" in outcome.reason


def test_a_refusal_cannot_be_swallowed():
    outcome = run("try:\n    import socket\nexcept BaseException:\n    pass\n")
    assert outcome.status == "refused"


def test_writes_outside_the_folder_are_refused_and_nothing_escapes():
    name = f"llm-modules-escape-{uuid.uuid4().hex}"
    tmp = Path(tempfile.gettempdir())
    for source in (f"open('../{name}', 'w').write('x')\n", f"open('{tmp / name}', 'w').write('x')\n",
                   f"import os\nos.open('{tmp / name}', os.O_WRONLY | os.O_CREAT)\n",
                   f"import os\nos.mkdir('../{name}')\n"):
        outcome = run(source)
        assert outcome.status == "refused" and name in outcome.reason
        assert not (tmp / name).exists()


def test_files_inside_the_folder_are_fine():
    outcome = run("import os\nopen('a.txt', 'w').write('x')\nos.mkdir('d')\nos.chmod('d', 0)\n"
                  "assert open('a.txt').read() == 'x'\nassert os.environ['HOME'] == os.getcwd()\n")
    assert outcome.status == "passed", outcome.reason


@pytest.mark.parametrize("source", [
    "import os\nos.fork()\n",
    "import os\nos.system('true')\n",
    "import subprocess\nsubprocess.run(['true'])\n",
    "import os\nos.execv('/bin/true', ['true'])\n",
    "import ctypes\n",
])
def test_new_processes_and_native_code_are_refused(source):
    assert run(source).status == "refused"


def test_ordinary_standard_library_modules_work():
    modules = ["collections", "functools", "itertools", "math", "re", "string", "heapq", "bisect", "typing",
               "dataclasses", "random", "datetime", "json", "fractions", "decimal", "statistics", "enum"]
    outcome = run("\n".join(f"import {m}" for m in modules) + "\nP = collections.namedtuple('P', 'x y')\n"
                  "assert P(1, 2).y == 2 and functools.lru_cache()(abs)(-3) == 3\n")
    assert outcome.status == "passed", outcome.reason


def test_the_untrusted_code_runs_isolated():
    outcome = run("import sys\nassert sys.flags.isolated and sys.flags.no_site\n"
                  "import os\nassert set(os.environ) <= {'HOME', 'TMPDIR', 'PATH', 'LANG', 'LC_CTYPE'}\n")
    assert outcome.status == "passed", outcome.reason


def test_the_network_namespace_has_no_interface_but_loopback():
    how = isolation()
    if not how.network_namespace:
        pytest.skip("this kernel does not let an unprivileged process make a network namespace")
    done = subprocess.run([*how.prefix, sys.executable, "-I", "-S", "-c", "print(open('/proc/net/dev').read())"],
                          capture_output=True, text=True, timeout=30)
    interfaces = {line.split(":")[0].strip() for line in done.stdout.splitlines()[2:] if ":" in line}
    assert done.returncode == 0 and interfaces == {"lo"}


def test_as_root_the_program_runs_as_nobody_where_nobody_can_run_python(monkeypatch, tmp_path):
    """Our venv's interpreter may sit where nobody cannot reach it (as here, under /root); a system
    Python shows the unprivileged path: the program cannot even read a file of ours."""
    system = shutil.which("python3", path="/usr/bin:/usr/local/bin")
    if os.geteuid() != 0 or not system:
        pytest.skip("needs root and a system python3")
    secret = tmp_path / "secret"
    secret.write_text("ours")
    secret.chmod(0o600)
    monkeypatch.setattr(sys, "executable", system)
    isolation.cache_clear()
    try:
        if isolation().user is None:
            pytest.skip("nobody cannot run the system python3 here")
        outcome = run(f"try:\n    open({str(secret)!r}).read()\nexcept PermissionError:\n    pass\n"
                      "else:\n    raise AssertionError('read a file of ours')\nopen('mine', 'w').write('x')\n")
        assert outcome.status == "passed", outcome.reason
    finally:
        isolation.cache_clear()


def test_a_namespace_that_cannot_be_made_is_an_error_not_a_failed_program(monkeypatch):
    """unshare fails when the user-namespace limit is reached: no program ran, so no verdict on it."""
    from llm_modules.evaluation import sandbox

    failing = ("/bin/sh", "-c", "echo 'unshare: unshare failed: No space left on device' >&2; exit 1", "sh")
    monkeypatch.setattr(sandbox, "isolation", lambda: sandbox.Isolation(failing, None))
    with pytest.raises(sandbox.SandboxError, match="could not start"):
        run_program("assert True\n")
