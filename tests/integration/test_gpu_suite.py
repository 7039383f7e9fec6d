"""benchmarks/gpu_suite.py, the one-call GPU readiness benchmark, checked on a CPU: the plan it
would run on a GPU, the install commands it would give pip, its time limits, what a machine
without CUDA records, and one ``--cpu-smoke`` run of the real benchmark scripts at tiny sizes
(which fails when one of them changes under the suite: attention.py once called a backend
method with arguments it no longer took)."""

from __future__ import annotations

import importlib.util
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from _fit_helpers import REPO

SUITE = REPO / "benchmarks" / "gpu_suite.py"
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks what a machine without CUDA records")


def load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def suite():
    return load("gpu_suite", SUITE)


def test_on_a_gpu_it_plans_the_issue_s_measurements(suite, tmp_path):
    jobs = suite.plan(suite.parse(["--out", str(tmp_path / "x.json")]), tmp_path)
    by_section: dict[str, dict] = {}
    for job in jobs:
        by_section.setdefault(job.section, {})[job.name] = job
    assert list(by_section) == ["gpu_tests", "mfu", "attention", "decode"]

    mfu = by_section["mfu"]
    assert set(mfu) == {f"{m}/{mode}" for m in ("llama-350m", "llama-1b") for mode in ("eager", "compiled")}
    for name, job in mfu.items():
        cmd = " ".join(job.cmd)
        assert "--seq-len 2048" in cmd and "--precision bf16-mixed" in cmd and f"--preset {name.split('/')[0]}" in cmd
        assert ("--compile" in job.cmd) == name.endswith("compiled") and job.skipped is None
    attention = by_section["attention"]
    assert set(attention) == {"sdpa", "flex", "flash_attn", "xformers"}
    assert all("--seq-lens 2048 8192" in " ".join(job.cmd) and "--device cuda" in " ".join(job.cmd)
               for job in attention.values())
    assert set(by_section["decode"]) == {"batch-1", "batch-8"}

    # the GPU tests are found by their skipif, not listed by hand
    test_files = {Path(arg).relative_to(REPO).as_posix() for arg in by_section["gpu_tests"]["pytest"].cmd
                  if arg.endswith(".py")}
    assert {"tests/gpu/test_attention_plugins_gpu.py", "tests/integration/test_throughput.py"} <= test_files

    # the floors of the jobs fit the default budget, so every one of them gets a start
    assert sum(job.floor for job in jobs) < suite.DEFAULT_BUDGET_S


def test_mfu_benchmark_builds_llama_1b_from_the_train_step_config():
    mfu = load("mfu_benchmark", REPO / "benchmarks" / "mfu.py")
    cfg = mfu.model_for("llama-1b", 2048)
    assert (cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.max_seq_len) == (2048, 22, 32, 4, 2048)
    assert mfu.model_for("llama-350m", 2048).n_layers == 24  # presets still come first


def test_gpu_tests_are_those_that_say_they_need_cuda():
    selection = load("_gpu_test_selection", REPO / "benchmarks" / "_gpu_test_selection.py")
    here = Path("tests/unit/test_x.py")
    assert selection.is_gpu_test(here, [("skipif", {"reason": "needs a CUDA GPU"})])
    assert selection.is_gpu_test(here, [("parametrize", {}), ("skipif", {"reason": "needs 2 CUDA GPUs"})])
    assert selection.is_gpu_test(Path("tests/gpu/test_y.py"), [])
    assert selection.is_gpu_test(here, [("gpu", {})])
    assert not selection.is_gpu_test(here, [("skipif", {"reason": "the refusal is what a CPU-only machine sees"})])
    assert not selection.is_gpu_test(here, [("skipif", {"reason": "checks what a machine without CUDA records"})])
    assert not selection.is_gpu_test(here, [])


def test_pytest_outcomes_are_read_from_its_junit_xml(suite, tmp_path):
    xml = tmp_path / "junit.xml"
    xml.write_text(
        '<testsuites><testsuite name="pytest">'
        '<testcase classname="tests.gpu.test_a" name="test_ok" time="0.1"/>'
        '<testcase classname="tests.gpu.test_a" name="test_skip"><skipped message="needs a CUDA GPU"/></testcase>'
        '<testcase classname="tests.gpu.test_a" name="test_bad">'
        '<failure message="assert 1 == 2">trace</failure></testcase>'
        '</testsuite></testsuites>')
    job = suite.Job("gpu_tests", "pytest", output=xml)
    result = suite.read_result(job, 1)
    assert result["counts"] == {"passed": 1, "failed": 1, "error": 0, "skipped": 1}
    assert result["status"] == "failed" and "tests.gpu.test_a::test_bad" in result["reason"]
    assert result["tests"]["tests.gpu.test_a::test_skip"] == {"outcome": "skipped", "message": "needs a CUDA GPU"}


def test_attention_rows_sort_absent_backends_from_failing_ones(suite, tmp_path):
    rows = [{"backend": "sdpa", "seq_len": 2048, "batch": 8, "ms": 1.0, "tflops": 400.0},
            {"backend": "sdpa", "seq_len": 8192, "batch": 2, "error": "OutOfMemoryError: CUDA out of memory"},
            {"backend": "xformers", "seq_len": 2048, "batch": 8, "skipped": "xformers is not installed"}]
    out = tmp_path / "attention.json"
    job = suite.Job("attention", "x", output=out)

    def read(selected):
        out.write_text(json.dumps({"device": "H100", "args": {}, "results": selected}))
        return suite.read_result(job, 0)

    assert read(rows[:1])["status"] == "ok"
    absent = read(rows[2:])
    assert absent["status"] == "skipped" and absent["reason"] == "xformers is not installed"  # not a failure
    failed = read(rows)
    assert failed["status"] == "failed" and "out of memory" in failed["reason"]
    assert failed["backends"]["sdpa"]["2048"]["tflops"] == 400.0  # what ran is kept


def test_install_gives_pip_only_the_wheels_folder_and_installs_only_what_is_missing(suite, tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    for name in ("torch-2.13.0+cu128-cp312-cp312-manylinux_2_28_x86_64.whl", "setuptools-80.0.0-py3-none-any.whl",
                 "flash_attn-2.8.3-cp312-cp312-linux_x86_64.whl", "wheel-0.45.1-py3-none-any.whl"):
        (wheels / name).touch()
    everything = {suite.requirement_name(r): "9" for r in [*suite.project_requirements(), *suite.TEST_REQUIREMENTS]}

    # a fresh machine with no torch and no jsonargparse
    installed = {k: v for k, v in everything.items() if k not in ("torch", "jsonargparse")}
    todo = suite.install_plan(installed, wheels, "2.13.0")
    first, kernels, local = todo["commands"]
    assert first[first.index("--find-links") + 1] == str(wheels) and "--no-index" in first
    assert "torch==2.13.0" in first and any(arg.startswith("jsonargparse") for arg in first)
    assert "lightning" not in " ".join(first)  # installed: not touched
    assert kernels[-1:] == ["flash-attn"] and "--no-deps" in kernels and "--no-index" in kernels
    assert local.count("-e") == 3 and str(REPO) in local and "--no-deps" in local and "--no-index" in local
    assert local[local.index("--find-links") + 1] == str(wheels)  # setuptools and wheel are in the folder

    # a machine image with its own CUDA torch, everything installed: nothing to do, the torch kept is noted
    done = {**everything, "torch": "2.11.0+cu130", "flash-attn": "2.8.3",
            **{suite.canonical(name): "0.1.0" for name, _ in suite.LOCAL_DISTRIBUTIONS}}
    empty = tmp_path / "empty"
    empty.mkdir()
    todo = suite.install_plan(done, empty, "2.13.0")
    assert todo["commands"] == [] and "torch 2.11.0+cu130 is installed, not 2.13.0: kept" in todo["notes"][0]
    # ... unless the folder brings the torch asked for
    assert "torch==2.13.0" in suite.install_plan(done, wheels, "2.13.0")["commands"][0]


def test_missing_packages_without_wheels_fail_the_install_section_naming_the_flag(suite, tmp_path, monkeypatch):
    monkeypatch.setattr(suite, "installed_distributions", lambda: {})
    runner = suite.Suite(suite.parse(["--out", str(tmp_path / "x.json")]))
    result = runner.install(tmp_path)
    assert result["status"] == "failed" and "pass --wheels DIR" in result["reason"] and "torch==" in result["reason"]


def test_a_measurement_past_its_limit_is_killed_with_its_children_and_the_budget_holds_back_time(suite, tmp_path):
    runner = suite.Suite(suite.parse(["--out", str(tmp_path / "x.json"), "--budget-s", "60"]))
    pid_file = tmp_path / "grandchild.pid"
    hang = ("import subprocess, sys, time; "
            "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); "
            f"open({str(pid_file)!r}, 'w').write(str(p.pid)); time.sleep(120)")
    job = suite.Job("decode", "hang", [sys.executable, "-c", hang], timeout=3, floor=1)
    result = runner.run_job(job, [], tmp_path)
    assert result["status"] == "timeout" and result["elapsed_s"] < 15 and "3 s limit" in result["reason"]
    assert not _running(int(pid_file.read_text()))

    # a job that would eat the time the jobs after it are guaranteed is not started
    later = [suite.Job("decode", "later", ["true"], floor=59)]
    skipped = runner.run_job(suite.Job("mfu", "big", ["true"], timeout=30, floor=5), later, tmp_path)
    assert skipped["status"] == "skipped" and "budget" in skipped["reason"]


def test_bad_wheels_folder_is_one_line_and_exit_2(suite, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        suite.parse(["--wheels", str(tmp_path / "nowhere")])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and len(err.splitlines()) == 1 and "--wheels" in err and "no such folder" in err


def _running(pid: int) -> bool:
    """Whether ``pid`` runs: not gone, nor a zombie waiting for pytest (a subreaper) to collect it."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_suite_stopped_by_sigterm_ends_the_running_measurement_and_says_so(tmp_path):
    folder = tmp_path / "gpu"  # a tests/gpu/-like folder: every test in it is a GPU test
    folder.mkdir()
    pid_file = tmp_path / "pytest.pid"
    (folder / "test_sleeps.py").write_text(
        f"import os, time\n\ndef test_sleeps():\n    open({str(pid_file)!r}, 'w').write(str(os.getpid()))\n"
        "    time.sleep(120)\n")
    out = tmp_path / "suite.json"
    proc = subprocess.Popen([sys.executable, str(SUITE), "--cpu-smoke", "--sections", "gpu_tests", "decode",
                             "--test-files", str(folder / "test_sleeps.py"), "--out", str(out)],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 90
        while not pid_file.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert pid_file.exists(), proc.communicate(timeout=30)[0][-3000:]
        time.sleep(0.2)  # the pid is written
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=30)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1 and "stopped by SIGTERM" in output, output[-3000:]
    assert not _running(int(pid_file.read_text()))  # the measurement's process did not outlive the suite
    result = json.loads(out.read_text())
    assert result["stopped"] == "SIGTERM" and result["ok"] is False
    tests = result["sections"]["gpu_tests"]["jobs"]["pytest"]
    assert tests["status"] == "timeout" and "stopped by SIGTERM while it ran" in tests["reason"]
    assert result["sections"]["decode"]["jobs"]["batch-2"]["status"] == "skipped"


def _run(args: list[str], tmp_path: Path, timeout: float) -> dict:
    out = tmp_path / "suite.json"
    proc = subprocess.run([sys.executable, str(SUITE), *args, "--out", str(out)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["suite"] == "gpu_suite" and result["ok"] is True and result["versions"]["torch"] == torch.__version__
    for section in result["sections"].values():
        assert section["status"] in ("ok", "skipped") and isinstance(section["elapsed_s"], float)
        assert section["status"] == "ok" or section.get("reason")
    return result


@NO_CUDA
def test_without_cuda_each_gpu_section_is_recorded_as_skipped_with_the_reason(tmp_path):
    result = _run([], tmp_path, timeout=120)
    assert result["mode"] == "gpu" and result["device"]["cuda"] is False
    assert list(result["sections"]) == ["install", "gpu_tests", "mfu", "attention", "decode"]
    assert result["sections"]["install"]["status"] == "skipped"  # this environment has every package
    for name in ("gpu_tests", "mfu", "attention", "decode"):
        section = result["sections"][name]
        assert section["status"] == "skipped" and "torch.cuda.is_available() is False" in section["reason"]
        assert all(job["status"] == "skipped" and job["command"] for job in section["jobs"].values())
    assert "llama-1b/compiled" in result["sections"]["mfu"]["jobs"] and result["figures"] == {}


@NO_CUDA
def test_cpu_smoke_runs_the_measurements_through_the_real_scripts(tmp_path):
    # gpu_tests is left out here (a pytest inside pytest costs ~8 s of CPU): its parts are the tests above and below
    result = _run(["--cpu-smoke", "--sections", "mfu", "attention", "decode"], tmp_path, timeout=240)
    sections = result["sections"]
    assert result["mode"] == "cpu-smoke" and result["elapsed_s"] < result["budget_s"]
    assert list(sections) == ["mfu", "attention", "decode"]

    mfu = sections["mfu"]["jobs"]
    eager = mfu["tiny/eager"]
    assert eager["status"] == "ok" and 0 < eager["figures"]["mfu"] <= 1 and eager["figures"]["seq_len"] == 32
    assert mfu["tiny/compiled"]["status"] == "skipped" and "compile" in mfu["tiny/compiled"]["reason"]

    backends = next(iter(sections["attention"]["jobs"].values()))["backends"]
    assert set(backends) == {"sdpa", "flex", "flash_attn", "xformers"}
    assert backends["sdpa"]["64"]["tflops"] > 0
    assert all(backends[name]["64"]["skipped"] for name in ("flex", "flash_attn", "xformers"))  # not failures

    figures = result["figures"]
    assert figures["mfu/tiny/eager"] == eager["figures"]["mfu"] and figures["attention/sdpa/64/tflops"] > 0
    assert figures["decode/batch-2/tokens_per_s"] > 0 and figures["decode/batch-2/transformers_tokens_per_s"] > 0
    assert figures["decode/batch-2/ours_vs_transformers"] > 0
