"""``llm-modules evaluate``: lm-eval tasks (local YAML + JSONL written here) on a tiny fit checkpoint,
0-shot and k-shot; lm-eval's table on stdout and its results JSON in --output (refused when it exists,
replaced with --overwrite); every bad input one line, exit 2. Skipped without lm-eval (the eval extra)."""

from __future__ import annotations

import json
import sys

import pytest

from _eval_task_helpers import GEN_TASK, MC_TASK, write_tasks

pytest.importorskip("lm_eval")



@pytest.fixture(scope="module")
def checkpoint(quickstart_checkpoint):
    return quickstart_checkpoint


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    return write_tasks(tmp_path_factory.mktemp("tasks"))


def evaluate(capsys, *args) -> tuple[int, str, str]:
    from llm_modules.cli import main

    capsys.readouterr()
    code = main(["evaluate", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(err: str, *parts: str) -> None:
    lines = [line for line in err.splitlines() if line.startswith("llm-modules evaluate: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    for part in parts:
        assert part in lines[0], lines[0]


@pytest.mark.parametrize("shots", [0, 2])
def test_tasks_from_yaml_files_print_the_table_and_write_the_json(checkpoint, tasks, tmp_path, capsys, shots):
    out_file = tmp_path / "results.json"
    code, out, err = evaluate(capsys, checkpoint, "--tasks", f"{tasks['mc']},{tasks['gen']}", "--num_fewshot", shots,
                              "--limit", 4, "--output", out_file, "--log_samples", "--batch_size", 3)
    assert code == 0, err
    results = json.loads(out_file.read_text())
    assert set(results["results"]) == {MC_TASK, GEN_TASK}
    assert results["n-shot"] == {MC_TASK: shots, GEN_TASK: shots}
    assert results["configs"][MC_TASK]["output_type"] == "multiple_choice"
    assert results["configs"][GEN_TASK]["output_type"] == "generate_until"
    assert results["config"]["model"] == str(checkpoint) and results["config"]["limit"] == 4
    for task, metric in ((MC_TASK, "acc"), (GEN_TASK, "exact_match")):
        samples = results["samples"][task]
        assert len(samples) == 4
        # the aggregate is the mean of the per-document scores lm-eval logged
        assert results["results"][task][f"{metric},none"] == pytest.approx(
            sum(s[metric] for s in samples) / len(samples))
        prompt = samples[0]["arguments"][0][0]
        assert prompt.count("\n\n") == shots  # k demonstrations, each followed by lm-eval's delimiter
        # the table shows the same value
        row = next(line for line in out.splitlines() if line.startswith(f"|{task}"))
        cells = [c.strip() for c in row.split("|")]
        assert float(cells[cells.index(metric) + 2]) == pytest.approx(results["results"][task][f"{metric},none"],
                                                                      abs=1e-4)
        assert cells[4] == str(shots)
    # each of a document's 3 choices was scored by the checkpoint's model: the same log-likelihoods as asking it
    from lm_eval.api.instance import Instance

    from llm_modules.evaluation.lm_eval_model import LLMModulesLM

    sample = results["samples"][MC_TASK][0]
    requests = [Instance("loglikelihood", {}, tuple(args), i) for i, args in enumerate(sample["arguments"])]
    direct = LLMModulesLM(str(checkpoint), batch_size=3).loglikelihood(requests, disable_tqdm=True)
    assert len(direct) == 3
    for (score, greedy), (logged, logged_greedy) in zip(direct, sample["filtered_resps"]):
        assert score == pytest.approx(logged, abs=1e-5) and greedy == logged_greedy


def test_output_is_refused_before_any_work_and_replaced_with_overwrite(checkpoint, tasks, tmp_path, capsys):
    out_file = tmp_path / "results.json"
    out_file.write_text("keep me")
    code, _, err = evaluate(capsys, tmp_path / "missing.ckpt", "--tasks", tasks["mc"], "--output", out_file)
    assert code == 2
    one_line_error(err, str(out_file), "already exists", "--overwrite")  # not the missing model: checked first
    assert out_file.read_text() == "keep me"
    code, out, err = evaluate(capsys, checkpoint, "--tasks", tasks["mc"], "--limit", 2, "--output", out_file,
                              "--overwrite")
    assert code == 0, err
    assert json.loads(out_file.read_text())["results"][MC_TASK]["acc,none"] in (0.0, 0.5, 1.0)
    assert f"wrote {out_file}" in out


def test_a_hugging_face_folder_scores_as_its_checkpoint_does(checkpoint, tasks, tmp_path, capsys):
    from llm_modules.cli import main

    assert main(["export", str(checkpoint), str(tmp_path / "hf")]) == 0
    scores = {}
    for name, model in (("ckpt", checkpoint), ("hf", tmp_path / "hf")):
        out_file = tmp_path / f"{name}.json"
        code, _, err = evaluate(capsys, model, "--tasks", tasks["mc"], "--limit", 4, "--log_samples",
                                "--output", out_file)
        assert code == 0, err
        results = json.loads(out_file.read_text())
        scores[name] = [s["filtered_resps"] for s in results["samples"][MC_TASK]], results["results"][MC_TASK]
    for ours, theirs in zip(scores["ckpt"][0], scores["hf"][0]):
        assert [r[0] for r in ours] == pytest.approx([r[0] for r in theirs], abs=1e-4)
    assert scores["ckpt"][1]["acc,none"] == scores["hf"][1]["acc,none"]


def test_a_group_yaml_runs_its_member_tasks(checkpoint, tasks, tmp_path, capsys):
    group = tmp_path / "group.yaml"
    group.write_text(f"group: tiny_group\ntask: [{MC_TASK}, {GEN_TASK}]\n")
    out_file = tmp_path / "results.json"
    code, out, err = evaluate(capsys, checkpoint, "--tasks", group, "--include_path", tasks["mc"].parent,
                              "--limit", 2, "--output", out_file)
    assert code == 0, err
    results = json.loads(out_file.read_text())
    assert set(results["results"]) >= {MC_TASK, GEN_TASK}
    assert sorted(results["group_subtasks"]["tiny_group"]) == sorted([MC_TASK, GEN_TASK])
    assert f"- {MC_TASK}" in out


def test_bundled_task_folder_is_searched_by_name(checkpoint, tasks, monkeypatch, capsys):
    from llm_modules.evaluation import runner

    monkeypatch.setattr(runner, "bundled_tasks_dir", lambda: tasks["mc"].parent)
    code, out, err = evaluate(capsys, checkpoint, "--tasks", MC_TASK, "--limit", 2)
    assert code == 0, err
    assert f"|{MC_TASK}" in out


@pytest.mark.parametrize("shots", [0, 5])
def test_the_bundled_tasks_score_a_quickstart_checkpoint_from_the_command_line(checkpoint, tmp_path, capsys, shots):
    out_file = tmp_path / "bundled.json"
    code, out, err = evaluate(capsys, checkpoint, "--tasks", "llm_modules", "--num_fewshot", shots, "--limit", 2,
                              "--output", out_file, "--log_samples")
    assert code == 0, err
    results = json.loads(out_file.read_text())
    metrics = {"llm_modules_choice": ("acc,none", "acc_norm,none"), "llm_modules_answer": ("exact_match,extract",),
               "llm_modules_code": ("pass@1,programs", "pass@5,programs")}
    for task, names in metrics.items():
        assert results["n-shot"][task] == shots
        assert results["n-samples"][task]["effective"] == 2
        for name in names:
            assert 0.0 <= results["results"][task][name] <= 1.0
        assert task in out  # a row of the printed table (under the group)
    code_samples = results["samples"]["llm_modules_code"][0]
    assert len(code_samples["resps"][0]) == 10  # pass@k from 10 sandboxed samples per problem
    prompt = results["samples"]["llm_modules_choice"][0]["arguments"][0][0]
    assert prompt.count("Question:") == shots + 1


def test_prepare_tasks_hook_changes_the_prompts_after_the_few_shot_count_is_set(checkpoint, tasks):
    """The hook demonstration design and chain-of-thought use: it sees every loaded task with its final
    few-shot count, before any request is built, and what it changes is what the model is asked."""
    from llm_modules.evaluation.lm_eval_model import LLMModulesLM
    from llm_modules.evaluation.runner import evaluate_tasks

    seen = {}

    def prepare(loaded):
        for name, task in loaded.items():
            seen[name] = task.get_config("num_fewshot")
            task.set_config(key="description", value="Answer the question.\n\n")

    lm = LLMModulesLM(str(checkpoint), batch_size=4)
    results = evaluate_tasks(lm, [str(tasks["mc"])], num_fewshot=1, limit=2, log_samples=True, prepare_tasks=prepare)
    assert seen == {MC_TASK: 1}
    for sample in results["samples"][MC_TASK]:
        assert sample["arguments"][0][0].startswith("Answer the question.\n\n")


def test_demonstration_and_chain_of_thought_flags_shape_every_prompt(checkpoint, tasks, tmp_path, capsys):
    out_file = tmp_path / "designed.json"
    code, _, err = evaluate(capsys, checkpoint, "--tasks", str(tasks["gen"]), "--num_fewshot", 2, "--limit", 3,
                            "--log_samples", "--output", out_file, "--demonstrations", "bm25",
                            "--demo_template", "Q: {{q}}\\nA: {{target}}", "--cot", "zeroshot")
    assert code == 0, err
    results = json.loads(out_file.read_text())
    assert results["config"]["prompt_design"]["demonstrations"] == "bm25"
    for sample in results["samples"][GEN_TASK]:
        prompt, question = sample["arguments"][0][0], sample["doc"]["q"]
        assert prompt.count("Q: print(") == 3  # two demonstrations in the template, then the question
        assert prompt.rstrip().endswith("Let's think step by step.")
        demos = prompt.split("Q: ")[1:-1]
        assert all(not d.startswith(question) for d in demos)  # never its own demonstration


def test_help_documents_every_option(capsys):
    code, out, _ = evaluate(capsys, "--help")
    assert code == 0
    for option in ("MODEL", "--tasks", "--num_fewshot", "--limit", "--output", "--overwrite", "--batch_size",
                   "--device", "--seed", "--include_path", "--log_samples", "--confirm_run_unsafe_code"):
        assert option in out


def test_evaluate_is_listed_among_the_commands(capsys):
    from llm_modules.cli import main

    assert main(["--help"]) == 0
    assert "  evaluate " in capsys.readouterr().out


@pytest.mark.parametrize("case", ["missing model", "folder without config", "yaml without task", "missing yaml",
                                  "negative k", "negative limit", "zero batch", "hub data offline", "unsafe code",
                                  "bad device", "broken task", "missing data file", "bad demonstrations"])
def test_bad_input_is_one_line(checkpoint, tasks, tmp_path, monkeypatch, capsys, case):
    for name in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):  # the run sets them itself when the user has not
        monkeypatch.delenv(name, raising=False)
    model, task, extra = checkpoint, tasks["mc"], []
    expected: tuple[str, ...]
    if case == "missing model":
        model, expected = tmp_path / "nope.ckpt", ("MODEL", "nope.ckpt", "does not exist")
    elif case == "folder without config":
        model, expected = tmp_path, ("MODEL", "not a Hugging Face model folder")
    elif case == "yaml without task":
        task, expected = tasks["notask"], ("notask.yaml", "does not define a task", "task: NAME")
    elif case == "missing yaml":
        task, expected = tmp_path / "gone.yaml", ("gone.yaml", "does not exist")
    elif case == "negative k":
        extra, expected = ["--num_fewshot", "-1"], ("--num_fewshot -1", ">= 0")
    elif case == "negative limit":
        extra, expected = ["--limit", "-3"], ("--limit -3", "> 0")
    elif case == "zero batch":
        extra, expected = ["--batch_size", "0"], ("--batch_size 0", ">= 1")
    elif case == "bad device":
        extra, expected = ["--device", "gpu0"], ("--device 'gpu0'", "not a torch device")
    elif case == "broken task":
        task = tmp_path / "broken.yaml"
        task.write_text(tasks["mc"].read_text().replace("output_type: multiple_choice", "output_type: multi_choice"))
        expected = ("task 'tiny_mc' could not be loaded", "multi_choice", "check its YAML")
    elif case == "missing data file":
        task = tmp_path / "gone.yaml"
        task.write_text(tasks["mc"].read_text().replace("mc.jsonl", "gone.jsonl"))
        expected = ("task 'tiny_mc'", "gone.jsonl", "check the task's data_files")
    elif case == "bad demonstrations":
        extra, expected = ["--demonstrations", "bm26"], ("demonstrations", "'bm26'", "'bm25'")
    elif case == "unsafe code":
        task, expected = tasks["unsafe"], ("'tiny_unsafe'", "runs code the model writes", "--confirm_run_unsafe_code")
    else:
        task, expected = tasks["hub"], ("'needs_the_hub'", "not available offline")
    code, _, err = evaluate(capsys, model, "--tasks", task, *extra)
    assert code == 2
    one_line_error(err, *expected)


def test_unknown_task_name_suggests_the_closest_known_one(checkpoint, tasks, capsys):
    """lm-eval's own names and ours are both candidates (this one indexes lm-eval's task files: seconds)."""
    code, _, err = evaluate(capsys, checkpoint, "--tasks", "tiny_mcc", "--include_path", tasks["mc"].parent)
    assert code == 2
    one_line_error(err, "unknown task 'tiny_mcc'", "did you mean 'tiny_mc'?")


def test_without_lm_eval_says_which_extra_to_install(checkpoint, tasks, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # import lm_eval -> ImportError
    code, _, err = evaluate(capsys, checkpoint, "--tasks", tasks["mc"])
    assert code == 2
    one_line_error(err, "lm-eval is not installed", "pip install 'llm-modules[eval]'")


def test_a_model_lm_eval_cannot_score_is_one_line(checkpoint, tasks, monkeypatch, capsys):
    """What LLMModulesLM refuses with ValueError (an encoder-only model, no tokenizer) reaches the user as one line."""
    from llm_modules.evaluation import lm_eval_model

    def refuse(self, *args, **kwargs):
        raise ValueError("MaskedLM is encoder-only: lm-eval requests need a decoder")

    monkeypatch.setattr(lm_eval_model.LLMModulesLM, "__init__", refuse)
    code, _, err = evaluate(capsys, checkpoint, "--tasks", tasks["mc"])
    assert code == 2
    one_line_error(err, f"MODEL {str(checkpoint)!r}", "encoder-only")


def test_offline_switches_are_set_for_the_run_and_restored(monkeypatch):
    import os

    from llm_modules.evaluation import runner

    for name in runner.OFFLINE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    with runner.offline():
        assert all(os.environ[name] == "1" for name in runner.OFFLINE_VARIABLES)
    assert not any(name in os.environ for name in runner.OFFLINE_VARIABLES)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # the user's choice is kept
    with runner.offline():
        assert os.environ["HF_HUB_OFFLINE"] == "0" and "HF_DATASETS_OFFLINE" not in os.environ


def test_a_planted_pickle_is_refused_and_never_runs(tasks, tmp_path, monkeypatch, capsys):
    from _checkpoint_faults import MARKER, plant, refused

    monkeypatch.chdir(tmp_path)
    evil = plant(tmp_path / "evil.ckpt")
    refused(["evaluate", str(evil), "--tasks", str(tasks["mc"])], capsys, str(evil), "holds Python objects")
    assert not (tmp_path / MARKER).exists()
