"""Helpers the bundled task YAMLs name with ``!function utils.NAME`` (lm-eval loads this file by path).

``load`` reads a task's JSONL next to this file, so the data resolves from the installed package
whatever the working directory (lm-eval's ``dataset_path: json`` + ``data_files`` would resolve
relative paths against the current directory instead) and without the network or a datasets cache.
``build_programs`` and ``pass_at_k`` score the code task: every generated sample is run with its
unit tests in llm_modules.evaluation.sandbox, never in this process.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

DATA = Path(__file__).resolve().with_name("data")
SPLITS = ("train", "test")


def load(data_file: str, **_metadata):
    """``custom_dataset``: the ``train`` and ``test`` splits of ``data/DATA_FILE`` as a DatasetDict.
    lm-eval passes the task's metadata too (version and the like): ignored."""
    import datasets

    with open(DATA / data_file, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return datasets.DatasetDict({split: datasets.Dataset.from_list([r for r in rows if r["split"] == split])
                                 for split in SPLITS})


def build_programs(resps: list[list[str]], docs: list[dict]) -> list[list[str]]:
    """Filter: each of a problem's generated bodies completed into a program (prompt + body)."""
    return [[doc["prompt"] + body for body in bodies] for bodies, doc in zip(resps, docs)]


def pass_at_k(references: list[str], predictions: list[list[str]], k: int | list[int] = 1,
              timeout: float = 5.0, memory_mb: int = 512, workers: int | None = None) -> dict[str, float]:
    """Metric for one problem: its n programs (``predictions[0]``) each run in the sandbox with the
    problem's tests (``references[0]``), ``workers`` at a time (default: one per CPU); ``pass@K`` for
    every K in ``k`` that is at most n (the unbiased estimator; lm-eval averages it over problems)."""
    from concurrent.futures import ThreadPoolExecutor

    from llm_modules.evaluation.passk import pass_at_k as estimate
    from llm_modules.evaluation.sandbox import run_program

    (tests,), (programs,) = references, predictions
    programs = [programs] if isinstance(programs, str) else list(programs)

    def passes(program: str) -> bool:
        return run_program(f"{program}\n\n{tests}", timeout=timeout, memory_mb=memory_mb).passed

    with ThreadPoolExecutor(max_workers=max(1, min(len(programs), workers or os.cpu_count() or 1))) as pool:
        correct = sum(pool.map(passes, programs))
    ks = [k] if isinstance(k, int) else list(k)
    return {f"pass@{each}": estimate(len(programs), correct, each) for each in ks if each <= len(programs)}
