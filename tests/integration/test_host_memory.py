"""``training.host_memory.retain_freed_cpu_memory``: freed CPU memory is reused, not faulted back in.

Measured in a fresh interpreter (the setting is process-wide, and the pytest worker's allocator has
a history): the same large allocation, repeated, costs a page fault per 4 KiB page every time under
glibc's defaults (each block is a fresh ``mmap``) and next to none once freed memory is retained.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from _fit_helpers import REPO

SCRIPT = """
import json, resource
from llm_modules.training.host_memory import retain_freed_cpu_memory

def faults(times=10, size=64 << 20):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(times):
        block = bytearray(size)  # malloc'd and zero-filled: every page touched
        del block
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

faults(1)
default = faults()
took = retain_freed_cpu_memory(True)
faults(1)  # the heap grows to hold the block once
retained = faults()
restored = retain_freed_cpu_memory(False)
print(json.dumps({"default": default, "retained": retained, "took": took, "restored": restored,
                  "after_restore": faults()}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a glibc malloc setting")
def test_retained_memory_is_reused_instead_of_faulted_back_in():
    out = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["took"] and got["restored"], got
    pages = 10 * (64 << 20) // 4096
    assert got["default"] > pages * 0.9, got  # glibc's default: every block mapped afresh
    assert got["retained"] < pages * 0.05, got
    assert got["after_restore"] > pages * 0.9, got  # False gives glibc's behaviour back
