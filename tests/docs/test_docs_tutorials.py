"""The tutorials run as written (the runner and its rules: tests/docs/test_docs.py).

In a file of their own because they are the longest pages: with ``--dist loadfile`` each test file
runs on one worker, and all pages in one file kept one worker busy for most of the suite.
"""

from __future__ import annotations

import pytest

from test_docs import TUTORIALS, isolated_registries, page_dir, rel, run_page  # noqa: F401  (fixtures)


@pytest.mark.parametrize("page", TUTORIALS, ids=rel)
def test_tutorial_runs(page, page_dir, isolated_registries):
    run_page(page, page_dir)
