"""The lock of ``llm_modules.file_lock`` belongs to the process that took it, not to its forked children
(a forked manager process outliving a killed run used to keep a rerun out)."""

from __future__ import annotations

import os
import signal
import time

import pytest

from llm_modules.file_lock import LockHeld, hold

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX only")


def test_a_forked_child_does_not_keep_the_lock(tmp_path):
    path = tmp_path / ".lock"
    handle = hold(path)
    ready, started = os.pipe()
    child = os.fork()
    if child == 0:  # the child: says it runs (the fork handlers have run by then), sleeps until killed
        os.write(started, b"x")
        time.sleep(60)
        os._exit(0)
    try:
        assert os.read(ready, 1) == b"x"
        with pytest.raises(LockHeld, match=f"by process {os.getpid()}"):
            hold(path)  # still held by this process
        handle.close()  # as when this process dies
        again = hold(path)  # the living child holds nothing
        assert again is not None
        again.close()
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
        os.close(ready)
        os.close(started)


def test_the_parent_keeps_the_lock_after_a_child_exits(tmp_path):
    path = tmp_path / ".lock"
    handle = hold(path)
    child = os.fork()
    if child == 0:
        os._exit(0)
    os.waitpid(child, 0)
    with pytest.raises(LockHeld):
        hold(path)
    handle.close()
