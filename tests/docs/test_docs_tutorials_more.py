"""The other half of the tutorials (``test_docs.MORE_TUTORIALS``): a file of its own so that with
``--dist loadfile`` the two halves run on the two workers side by side (see test_docs_tutorials.py)."""

from __future__ import annotations

import pytest

from test_docs import MORE_TUTORIALS, TUTORIALS, isolated_registries, page_dir, rel, run_page  # noqa: F401

PAGES = [page for page in TUTORIALS if page.name in MORE_TUTORIALS]


def test_every_page_named_for_this_file_exists():
    assert len(PAGES) == len(MORE_TUTORIALS), "a page in MORE_TUTORIALS was renamed or removed"


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_tutorial_runs(page, page_dir, isolated_registries):
    run_page(page, page_dir)
