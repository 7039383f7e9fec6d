"""Suite-wide settings.

Test models are tiny, so one intra-op thread is faster than two, and it avoids OpenMP's spin-wait
collapse when another process shares the two cores (observed: 2 s vs 110 s for one tiny fit).
Subprocesses the tests start inherit the variable.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)


import pytest  # noqa: E402

from _fit_helpers import write_corpus  # noqa: E402


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A tiny folder corpus for end-to-end fits, one per test module (a module may define its own)."""
    return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """Tokenizer and token-cache folder shared by a module's fits."""
    return tmp_path_factory.mktemp("cache")
