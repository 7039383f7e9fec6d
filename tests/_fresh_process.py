"""Run one test again, alone, in a new interpreter: for tests that fork (Lightning's ``ddp_fork``).

A pytest-xdist worker has run many test files before: one may have loaded pyarrow (through lm-eval and
datasets), whose jemalloc background thread and thread pools hold locks that a forked child inherits
locked, so the child's processes wait for ever (seen in the full suite: two DDP ranks asleep in a futex).
Forking is safe only from a process that has done nothing else; this gives the test one.
"""

from __future__ import annotations

import os
import subprocess
import sys

CHILD = "LLM_MODULES_TEST_IN_A_FRESH_PROCESS"


def in_a_fresh_interpreter(request, timeout: float = 300) -> bool:
    """True when the calling test should run its body here: in the new interpreter. In the pytest
    process that collected it, run the test there (``pytest NODEID``), assert it passed, and return
    False. The child is killed if it passes ``timeout``; processes it leaves are reaped by conftest."""
    if os.environ.get(CHILD) == request.node.nodeid:
        return True
    env = {**os.environ, CHILD: request.node.nodeid}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", request.node.nodeid]
    done = subprocess.run(command, cwd=request.config.rootpath, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, f"{request.node.nodeid} in a fresh interpreter:\n{done.stdout[-6000:]}\n{done.stderr[-3000:]}"
    return False
