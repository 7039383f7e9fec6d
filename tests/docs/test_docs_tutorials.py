"""The tutorials run as written (the runner and its rules: tests/docs/test_docs.py).

In a file of their own because they are the longest pages: with ``--dist loadfile`` each test file
runs on one worker, and all pages in one file kept one worker busy for most of the suite. The
tutorials themselves are split in two files (test_docs_tutorials_more.py: ``MORE_TUTORIALS``) for the
same reason.
"""

from __future__ import annotations

import pytest

from test_docs import MORE_TUTORIALS, TUTORIALS, isolated_registries, page_dir, rel, run_page  # noqa: F401

PAGES = [page for page in TUTORIALS if page.name not in MORE_TUTORIALS]


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_tutorial_runs(page, page_dir, isolated_registries):
    run_page(page, page_dir)
