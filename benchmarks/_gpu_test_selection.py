"""A pytest plugin that keeps only the GPU tests of the files it is given.

``benchmarks/gpu_suite.py`` runs ``pytest -p _gpu_test_selection FILES`` with FILES from its
``gpu_test_files`` (found by text). The GPU tests are listed nowhere by hand, so a new one is
picked up: a test is a GPU test when it sits in ``tests/gpu/`` (the ``gpu`` marker that
tests/conftest.py gives that folder) or carries a ``skipif`` whose reason says it needs CUDA or a
GPU, the suite's wording (``needs a CUDA GPU``, ``needs 2 CUDA GPUs``, ``needs a CUDA GPU and
bitsandbytes``). A ``skipif`` that skips *on* a GPU (``the refusal is what a CPU-only machine
sees``) says no such need, so its test is left out.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

#: a skipif reason that says the test needs CUDA / a GPU
GPU_REASON = re.compile(r"\bneeds?\b.*\b(cuda|gpus?)\b", re.IGNORECASE)


def is_gpu_test(path: Path, markers: list[tuple[str, dict]]) -> bool:
    """``markers``: (name, keyword arguments) of every marker on the test, its module's included."""
    if path.parent.name == "gpu" or any(name == "gpu" for name, _ in markers):
        return True
    return any(name == "skipif" and GPU_REASON.search(str(kwargs.get("reason", ""))) for name, kwargs in markers)


@pytest.hookimpl(trylast=True)  # after tests/conftest.py has added its folder markers
def pytest_collection_modifyitems(config, items):
    keep, drop = [], []
    for item in items:
        markers = [(mark.name, dict(mark.kwargs)) for mark in item.iter_markers()]
        (keep if is_gpu_test(Path(item.path), markers) else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
    items[:] = keep
