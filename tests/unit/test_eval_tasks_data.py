"""The bundled tasks' data (llm_modules/eval_tasks/data) is what generate_data.py writes, has train and test
splits big enough for 5-shot prompts, and every code problem's canonical solution passes its own tests
in the sandbox (while a wrong body fails them), so pass@k measures the model and not the data."""

from __future__ import annotations

import json

import pytest

from llm_modules.eval_tasks import TASKS, TASKS_DIR
from llm_modules.eval_tasks.generate_data import main as generate
from llm_modules.evaluation.sandbox import run_program


def rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (TASKS_DIR / "data" / name).read_text(encoding="utf-8").splitlines()]


def test_the_data_is_what_the_generator_writes():
    assert generate(["--check"]) == 0


def test_each_task_has_a_yaml_and_both_splits():
    for task in TASKS:
        assert (TASKS_DIR / f"{task}.yaml").is_file()
    for name, least in (("choice.jsonl", 100), ("answer.jsonl", 100), ("code.jsonl", 50)):
        data = rows(name)
        assert len(data) >= least and len({r["id"] for r in data}) == len(data)
        train = [r for r in data if r["split"] == "train"]
        assert len(train) >= 20 and len(data) - len(train) >= 30
    assert all(0 <= r["gold"] < len(r["choices"]) == len(set(r["choices"])) == 4 for r in rows("choice.jsonl"))
    assert all(r["rationale"] and r["answer"] in r["rationale"] for r in rows("answer.jsonl"))


def _all_problems(body_of) -> str:
    """One program that runs every problem, each in a namespace of its own (one sandbox process)."""
    parts = []
    for r in rows("code.jsonl"):
        parts.append(f"exec({r['prompt'] + body_of(r) + chr(10) + r['test']!r}, {{}})")
    return "\n".join(parts) + "\n"


def test_every_canonical_solution_passes_its_tests_in_the_sandbox():
    outcome = run_program(_all_problems(lambda r: r["canonical_solution"]), timeout=30)
    assert outcome.status == "passed", outcome.reason


def test_a_wrong_body_fails_every_problem():
    for r in rows("code.jsonl"):
        assert "assert " in r["test"] and f"def {r['entry_point']}(" in r["prompt"]
    program = "failures = 0\n" + "\n".join(
        f"try:\n    exec({r['prompt'] + '    return None' + chr(10) + r['test']!r}, {{}})\n"
        f"except AssertionError:\n    failures += 1" for r in rows("code.jsonl"))
    outcome = run_program(program + f"\nassert failures == {len(rows('code.jsonl'))}, failures\n", timeout=30)
    assert outcome.status == "passed", outcome.reason


def test_pyproject_ships_every_data_file_of_the_tasks():
    """The task YAML and JSONL travel in the wheel (package-data), or an installed copy has no tasks."""
    tomllib = pytest.importorskip("tomllib")
    pyproject = tomllib.loads((TASKS_DIR.parents[1] / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "llm_modules.eval_tasks" in pyproject["packages"]
    shipped = {p for pattern in pyproject["package-data"]["llm_modules.eval_tasks"] for p in TASKS_DIR.glob(pattern)}
    data = {p for p in TASKS_DIR.rglob("*") if p.is_file() and p.suffix not in (".py", ".pyc")}
    assert data and data <= shipped, sorted(map(str, data - shipped))
