"""A fit config's ``evaluate`` section (evaluation.evaluate_at_end): lm-eval tasks run on the trained model when
fit ends, every task metric logged as eval/<task>/<metric> at the last training step's step, lm-eval's JSON
in the run folder; a bad value in the section, or a strategy whose rank zero lacks the whole model, stops
the run before training, in one line naming the field. Skipped without lm-eval (the eval extra)."""

from __future__ import annotations

import csv
import json

import pytest
import yaml

from _eval_task_helpers import GEN_TASK, MC_TASK, write_tasks
from _fit_helpers import CONFIGS, REPO, tiny

pytest.importorskip("lm_eval")


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    return write_tasks(tmp_path_factory.mktemp("tasks"))


@pytest.fixture(scope="module")
def run(corpus, cache, tasks, tmp_path_factory):
    from llm_modules.cli import main

    root = tmp_path_factory.mktemp("fit-evaluate")
    config = root / "evaluate.yaml"
    config.write_text(yaml.safe_dump({"evaluate": {"tasks": [str(tasks["mc"]), str(tasks["gen"])],
                                                   "num_fewshot": 1, "limit": 3, "batch_size": 4,
                                                   "prompting": {"demonstrations": "bm25"}}}))
    args = tiny(REPO / "configs" / "quickstart.yaml", corpus, cache, "--config", str(config), steps=4)
    assert main(["fit", *args, "--trainer.default_root_dir", str(root), "--trainer.accelerator", "cpu"]) == 0
    return next(root.glob("**/metrics.csv")).parent


def test_task_metrics_are_logged_with_the_runs_other_metrics(run):
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    evaluated = [r for r in rows if r.get(f"eval/{MC_TASK}/acc")]
    assert len(evaluated) == 1
    row = evaluated[0]
    last_val_step = max(int(r["step"]) for r in rows if r.get("val/loss"))
    assert int(row["step"]) == last_val_step == 3  # 4 steps: the last training step's step
    results = json.loads((run / "lm_eval_results.json").read_text())
    assert results["n-shot"] == {MC_TASK: 1, GEN_TASK: 1}
    assert results["config"]["prompt_design"]["demonstrations"] == "bm25"  # the section's prompting was applied
    assert results["n-samples"][MC_TASK]["effective"] == 3
    for task, metric in ((MC_TASK, "acc"), (GEN_TASK, "exact_match")):
        assert float(row[f"eval/{task}/{metric}"]) == pytest.approx(results["results"][task][f"{metric},none"])
        assert f"eval/{task}/{metric}_stderr" in row


def test_the_section_is_saved_with_the_runs_config(run, tasks):
    saved = yaml.safe_load((run / "config.yaml").read_text())["evaluate"]
    assert saved["tasks"] == [str(tasks["mc"]), str(tasks["gen"])] and saved["num_fewshot"] == 1
    assert saved["prompting"] == {"demonstrations": "bm25"}


@pytest.mark.parametrize("override, expected", [
    (["--evaluate.num_fewshot", "-1"], ("evaluate.num_fewshot -1", ">= 0")),
    (["--evaluate.limit", "0"], ("evaluate.limit 0", "> 0")),
    (["--evaluate.batch_size", "0"], ("evaluate.batch_size 0", ">= 1")),
    (["--evaluate.tasks", "[]"], ("evaluate.tasks", "name at least one task")),
    (["--evaluate.prompting", "{{demonstrations: bm26}}"], ("evaluate.prompting.demonstrations", "'bm25'")),
    (["--evaluate.prompting", "{{demo: bm25}}"], ("evaluate.prompting: unknown field 'demo'", "demonstrations")),
    (["--evaluate.tasks", "[{notask}]"], ("evaluate.tasks", "does not define a task")),
    (["--evaluate.include_path", "[{missing}]"], ("evaluate.include_path", "is not a folder")),
    (["--evaluate.tasks", "[{hub}]"], ("evaluate.tasks", "'needs_the_hub'", "not available offline")),
    (["--evaluate.tasks", "[{unsafe}]"], ("evaluate.tasks", "'tiny_unsafe'", "confirm_run_unsafe_code")),
    (["--config", str(CONFIGS / "strategies" / "fsdp.yaml"), "--trainer.devices", "2"],
     ("evaluate:", "BlockFSDPStrategy", "llm-modules evaluate CKPT")),
])
def test_bad_section_stops_before_training_in_one_line(corpus, cache, tasks, tmp_path, monkeypatch, capsys, override,
                                                      expected):
    from llm_modules.cli import main

    for name in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):  # the check sets them itself when the user has not
        monkeypatch.delenv(name, raising=False)
    override = [o.format(notask=tasks["notask"], hub=tasks["hub"], unsafe=tasks["unsafe"],
                         missing=tmp_path / "missing") for o in override]
    args = tiny(REPO / "configs" / "quickstart.yaml", corpus, cache, "--evaluate.tasks", f"[{tasks['mc']}]",
                *override, steps=2)
    capsys.readouterr()
    assert main(["fit", *args, "--trainer.default_root_dir", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("llm-modules fit: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    for part in expected:
        assert part in lines[0], lines[0]
    assert not list((tmp_path / "runs").glob("**/*.ckpt"))  # nothing trained
