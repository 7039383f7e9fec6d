"""``data prepare`` on its three executors: the same shards, byte for byte, whether local processes
(any worker and task count), a real Ray cluster started here, or the Slurm job arrays it writes (run
here task by task, as Slurm would run them, with a stand-in ``sbatch`` that records what is submitted)."""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from _fit_helpers import reap
from test_prepare import CASES, SCRUB, change_words, prose, write_jsonl

from llm_modules.cli import main

TIMING = ("elapsed_s", "mb_per_s", "stage_seconds", "status", "workers", "executor")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Three JSONL files and a folder of text files, with every kind of drop and an eval file."""
    root = tmp_path_factory.mktemp("engines")
    rng = random.Random(3)
    texts = []
    for i in range(90):
        text = prose(rng, 70)
        texts.append(text)
        if i % 6 == 0:
            texts.append(text)
        if i % 7 == 1:
            texts.append(change_words(text, 1, rng))
        if i % 11 == 2:
            texts.append(list(CASES.values())[i % len(CASES)][0])
        if i % 5 == 0:
            texts.append(prose(rng, 40) + "\n" + SCRUB[i % len(SCRUB)][0])
    eval_text = prose(rng, 30)
    texts.insert(40, prose(rng, 40) + " " + eval_text)
    (root / "in" / "txt").mkdir(parents=True)
    for i, text in enumerate(texts[:10]):
        (root / "in" / "txt" / f"page{i:02d}.txt").write_text(text, encoding="utf-8")
    rest = texts[10:]
    third = len(rest) // 3
    for k, part in enumerate((rest[:third], rest[third:2 * third], rest[2 * third:])):
        write_jsonl(root / "in" / f"dump{k}.jsonl", part)
    write_jsonl(root / "eval.jsonl", [eval_text])
    return root


def args(root: Path, out: str, *extra: str) -> list[str]:
    return ["data", "prepare", str(root / "in"), "--out", str(root / out), "--eval", str(root / "eval.jsonl"),
            "--unit-mb", "0.01", "--shard-docs", "13", "--no-progress", *extra]


def shards(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.name.startswith("shard-")}


def counts(out: Path) -> dict:
    report = json.loads((out / "report.json").read_text())
    return {k: v for k, v in report.items() if k not in TIMING}


@pytest.fixture(scope="module")
def reference(corpus):
    assert main(args(corpus, "reference")) == 0
    out = corpus / "reference"
    report = counts(out)
    assert {r for r, d in report["dropped"].items() if d["documents"]} >= {
        "exact_duplicate", "near_duplicate", "decontamination"}
    assert len(shards(out)) > 3
    return shards(out), report


@pytest.mark.parametrize("extra", [("--workers", "2"), ("--workers", "2", "--tasks", "7"), ("--tasks", "1")],
                         ids=["2-workers", "2-workers-7-tasks", "1-task"])
def test_local_executor_output_does_not_depend_on_workers_or_tasks(corpus, reference, extra):
    out = f"local-{'-'.join(extra)}"
    assert main(args(corpus, out, *extra)) == 0
    assert shards(corpus / out) == reference[0]
    assert counts(corpus / out) == reference[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_env() -> dict[str, str]:
    """No usage reports, and no token authentication: a local ``ray.init()`` elsewhere on this machine
    leaves ``~/.ray/auth_token``, which Ray would otherwise switch on for one side of the connection."""
    return {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}


@pytest.fixture(scope="module")
def ray_cluster():
    """A Ray head node with 2 CPUs on 127.0.0.1 (and its own temp folder), stopped afterwards."""
    pytest.importorskip("ray")
    ray_bin = shutil.which("ray") or str(Path(sys.executable).parent / "ray")
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths live under it
    port = _free_port()
    env = ray_env()
    start = [ray_bin, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port), "--num-cpus", "2",
             "--include-dashboard", "false", "--disable-usage-stats", "--temp-dir", temp]
    log = Path(temp) / "start.log"
    try:
        # output to a file, not a pipe: the daemons it starts keep their inherited output open
        with open(log, "w") as sink:
            started = subprocess.run(start, stdout=sink, stderr=subprocess.STDOUT, timeout=120, env=env)
        assert started.returncode == 0, log.read_text()[-3000:]
        yield f"127.0.0.1:{port}"
    finally:
        with contextlib.suppress(subprocess.TimeoutExpired), open(os.devnull, "w") as sink:
            subprocess.run([ray_bin, "stop", "--force"], stdout=sink, stderr=sink, timeout=60, env=env)
        shutil.rmtree(temp, ignore_errors=True)


def test_ray_cluster_writes_the_same_shards(corpus, reference, ray_cluster):
    command = [sys.executable, "-m", "llm_modules",
               *args(corpus, "ray", "--executor", "ray", "--ray-address", ray_cluster, "--workers", "2")]
    err_file = corpus / "ray-stderr.txt"
    with open(err_file, "w") as sink:  # a file, not a pipe (see ray_cluster)
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=sink, start_new_session=True, env=ray_env())
        try:
            proc.wait(timeout=240)
        finally:
            reap(proc)
    err = err_file.read_text()
    assert proc.returncode == 0, err[-3000:]
    assert "Traceback" not in err and "datatrove" not in err  # its console logging stays in the task logs
    assert shards(corpus / "ray") == reference[0]
    assert counts(corpus / "ray") == reference[1]
    assert json.loads((corpus / "ray" / "report.json").read_text())["executor"] == "ray"


def test_unreachable_ray_cluster_is_one_line(corpus, capsys):
    pytest.importorskip("ray")
    port = _free_port()
    code = main(args(corpus, "no-ray", "--executor", "ray", "--ray-address", f"127.0.0.1:{port}"))
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "executor.ray.address" in err and "ray start --head" in err


FAKE_SBATCH = """#!/bin/bash
# records each submission; prints a job id as 'sbatch --parsable' does
n=$(( $(ls "{log}" | grep -c '[.]slurm$') + 101 ))
cp "${{@: -1}}" "{log}/$n.slurm"
echo "$*" > "{log}/$n.args"
echo "$n"
"""


def test_slurm_scripts_run_as_slurm_would_and_write_the_same_shards(corpus, reference, tmp_path, monkeypatch):
    log = tmp_path / "submitted"
    log.mkdir()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    sbatch = bin_dir / "sbatch"
    sbatch.write_text(FAKE_SBATCH.format(log=log))
    sbatch.chmod(sbatch.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    out = corpus / "slurm"
    assert main(args(corpus, "slurm", "--executor", "slurm", "--partition", "cpu", "--time", "01:30:00",
                     "--cpus-per-task", "2", "--workers", "3", "--tasks", "5",
                     "--set", "executor.slurm.sbatch_args={account: proj}")) == 0
    submitted = sorted(log.glob("*.slurm"), key=lambda p: int(p.stem))
    assert [p.stem for p in submitted] == ["101", "102", "103", "104"]
    scripts = [p.read_text() for p in submitted]
    stages = ["process", "select", "write", "finish"]
    for stage, script, job in zip(stages, scripts, (None, "101", "102", "103")):
        assert "#SBATCH --partition=cpu" in script and "#SBATCH --time=01:30:00" in script
        assert "#SBATCH --account=proj" in script
        assert ("#SBATCH --dependency=afterok:" + job in script) if job else "--dependency" not in script
        assert re.search(rf"-m llm_modules\.data\.prepare\.slurm_task \S+slurm {stage}\n", script), script
        assert "pickle" not in script
    assert "#SBATCH --array=0-4%3" in scripts[0] and "#SBATCH --cpus-per-task=2" in scripts[0]
    assert "#SBATCH --array=0-0" in scripts[1]
    assert "#SBATCH --array=0-2%3" in scripts[2]
    assert "--array" not in scripts[3]
    assert json.loads((out / "prepare-manifest.json").read_text())["complete"] is False
    # what Slurm would do: every array task of each job, in dependency order
    for script, tasks in zip(submitted, (5, 1, 3, 1)):
        for i in range(tasks):
            env = {**os.environ, "SLURM_ARRAY_TASK_ID": str(i), "SLURM_JOB_ID": str(1000 + i)}
            proc = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=120)
            assert proc.returncode == 0, proc.stderr[-3000:]
    assert shards(out) == reference[0]
    assert counts(out) == reference[1]
    # the rerun finds it complete
    assert main(args(corpus, "slurm", "--executor", "slurm")) == 0
    assert len(list(log.glob("*.slurm"))) == 4


def test_slurm_without_sbatch_says_what_to_do(corpus, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch anywhere
    code = main(args(corpus, "slurm-none", "--executor", "slurm"))
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--no-submit" in err
    assert main(args(corpus, "slurm-none", "--executor", "slurm", "--no-submit")) == 0
    written = sorted(p.name for p in (corpus / "slurm-none" / ".prepare-state" / "slurm").glob("*.slurm"))
    assert written == ["finish.slurm", "process.slurm", "select.slurm", "write.slurm"]


def test_unknown_executor_names_the_closest(corpus, capsys):
    assert main(args(corpus, "bad", "--executor", "slurn")) == 2
    err = capsys.readouterr().err
    assert "executor.kind" in err and "'slurm'" in err and len(err.strip().splitlines()) == 1
    assert not (corpus / "bad").exists()


def test_a_failed_task_is_reported_by_its_own_error(tmp_path):
    """Ray reports a failed task only in its log; the driver quotes the error the task logged."""
    from datatrove.executor.local import LocalPipelineExecutor

    from llm_modules.data.prepare.pipeline import _why

    def broken(data, rank, world_size):
        raise ValueError("inputs: 'dump.jsonl' line 7 is not valid JSON")

    executor = LocalPipelineExecutor([broken], tasks=1, logging_dir=str(tmp_path / "logs"))
    with pytest.raises(ValueError):
        executor.run()
    assert executor.get_incomplete_ranks(skip_completed=True) == [0]
    assert _why(tmp_path / "logs" / "logs", 0) == ": inputs: 'dump.jsonl' line 7 is not valid JSON"
    assert _why(tmp_path / "logs" / "logs", 5) == ""


def test_progress_shows_the_committed_input_and_each_stage(corpus, capsys):
    from llm_modules.data.prepare import from_dict, prepare

    config = from_dict({"inputs": [str(corpus / "in")], "out": str(corpus / "progress"),
                        "executor": {"unit_mb": 0.01}})
    prepare(config, progress=True)
    err = capsys.readouterr().err
    size = sum(p.stat().st_size for p in (corpus / "in").rglob("*") if p.is_file())
    assert f"{size / 1000:.1f}k/{size / 1000:.1f}k" in err  # the bar reached every input byte
    assert all(f"prepare: {stage}:" in err for stage in ("process", "select", "write"))
