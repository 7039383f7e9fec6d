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

from _fit_helpers import CONFIGS, tiny, write_corpus  # noqa: E402
from _leftover_processes import become_subreaper, descendants, reap_leftovers  # noqa: E402

become_subreaper()


@pytest.fixture(autouse=True)
def one_thread_after_each_test():
    """A test that sets torch's thread count (a benchmark's ``main`` run in-process) does not leave it to
    the tests after it on this worker: at two threads beside the other worker, tiny models ran 10-40x
    slower for the rest of the suite."""
    yield
    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)


@pytest.fixture(scope="module", autouse=True)
def no_process_left_behind():
    """Every process a test module starts has ended when the module ends (``_leftover_processes``)."""
    before = set(descendants())
    yield
    killed = reap_leftovers(before)
    if killed:
        pytest.fail("processes left running by this module (now killed): " + "; ".join(killed))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A tiny folder corpus for end-to-end fits, one per test module (a module may define its own)."""
    return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """Tokenizer and token-cache folder shared by a module's fits."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def quickstart_checkpoint(tmp_path_factory):
    """The last checkpoint of a tiny quickstart fit (5 steps, in this process), shared by every test on
    this worker that only needs some trained checkpoint with a tokenizer (the evaluation tests): read it,
    never write next to it."""
    from llm_modules.cli import main

    root = tmp_path_factory.mktemp("quickstart-checkpoint")
    args = tiny(CONFIGS / "quickstart.yaml", write_corpus(root / "corpus"), root / "cache", steps=5)
    assert main(["fit", *args, "--trainer.default_root_dir", str(root / "runs"), "--trainer.accelerator", "cpu"]) == 0
    return sorted((root / "runs").glob("**/checkpoints/last.ckpt"))[-1]


# The files that take longest, longest first. With ``--dist loadfile`` a file runs on one worker, and
# pytest-xdist by default hands out files with the most tests first, which puts these (few tests, each
# a multi-process or multi-command run) last: the suite then ends with one worker busy on a tutorial
# while the other idles. Starting them first lets the short files fill in around them.
LONGEST_FIRST = (
    "test_docs_tutorials.py",
    "test_docs_tutorials_more.py",
    "test_strategies.py",
    "test_preemption.py",
    "test_pipeline_strategy.py",
    "test_stability.py",
    "test_gpu_suite.py",
    # (below the seven marked slow) long files of several processes each: started early, they do not
    # end the suite with one worker busy
    "test_run_folders.py",
    "test_prepare_engines.py",
    "test_estimate.py",
    "test_finetune_strategies.py",
    "test_docs.py",
    "test_defaults_learn.py",
    "test_combinations.py",
    "test_families.py",
    "test_family_finetune.py",
    "test_training_cli.py",
    "test_pipeline_probe.py",
    "test_evaluate_cmd.py",
    "test_resume.py",
    "test_plugins.py",
    "test_finetune_cli.py",
    "test_finetune.py",
    "test_attention_backends.py",
)


def pytest_configure(config):
    if hasattr(config.option, "loadscopereorder"):  # keep our file order (pytest-xdist >= 3.6 sorts by size)
        config.option.loadscopereorder = False


#: the folders of tests/, each a marker of the same name (registered in pyproject.toml)
FOLDERS = ("unit", "parity", "integration", "docs", "gpu")
#: files whose tests start several training processes
MULTIPROCESS = ("test_strategies.py", "test_finetune_strategies.py")
#: the files marked ``slow``: the longest of LONGEST_FIRST
SLOW = LONGEST_FIRST[:7]


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order
    for item in items:
        folder = item.path.parent.name
        if folder in FOLDERS:
            item.add_marker(getattr(pytest.mark, folder))
        if item.path.name in MULTIPROCESS:
            item.add_marker(pytest.mark.multiprocess)
        if item.path.name in SLOW:
            item.add_marker(pytest.mark.slow)
