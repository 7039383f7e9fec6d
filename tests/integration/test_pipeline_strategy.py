"""PipelineParallelStrategy under Lightning's Trainer on CPU processes with gloo (tests/_pipeline_fit_worker.py):
pp 2 follows one process's loss curve and validation loss within 1e-5 for every schedule and for CausalLM,
PrefixLM and MaskedLM; so do pp 2 x dp 2 and pp 2 x tp 2 on 4 processes; a pp 2 run SIGKILLed after its
first checkpoint and resumed from it ends bitwise equal to an uninterrupted one; and a consolidated
checkpoint is one file that load_checkpoint and export read, holding the trained model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import _pipeline_fit_worker as worker
from _fit_helpers import free_port, reap
from safetensors.torch import load_file

pytestmark = pytest.mark.multiprocess
TESTS = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-5


class Ranks:
    """The worker's processes of one mode, started now and awaited later (so modes overlap)."""

    def __init__(self, mode: str, world: int, out: Path):
        port = str(free_port())
        path = os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
        self.mode, self.out = mode, out
        self.procs = [
            subprocess.Popen([sys.executable, str(TESTS / "_pipeline_fit_worker.py"), mode, str(rank), str(world),
                              port, str(out)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             start_new_session=True)
            for rank in range(world)
        ]
        self.results: list[dict] | None = None

    def wait(self, timeout: float = 400, expect_kill: bool = False) -> list[dict]:
        if self.results is None:
            deadline = time.monotonic() + timeout
            outputs = []
            try:
                for proc in self.procs:
                    outputs.append(proc.communicate(timeout=max(1.0, deadline - time.monotonic()))[0])
            finally:
                self.stop()
            for proc, output in zip(self.procs, outputs):
                if expect_kill:
                    assert proc.returncode == -9, f"{self.mode}: expected SIGKILL, exit {proc.returncode}\n{output[-4000:]}"
                else:
                    assert proc.returncode == 0, f"{self.mode}: exit {proc.returncode}\n{output[-6000:]}"
            self.results = [] if expect_kill else [
                json.loads((self.out / f"{self.mode}-rank{rank}.json").read_text()) for rank in range(len(self.procs))]
        return self.results

    def stop(self) -> None:
        for proc in self.procs:
            reap(proc)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("pipeline_strategy")
    started = {mode: Ranks(mode, world, out) for mode, world in
               (("schedules", 2), ("full", 2), ("kill", 2), ("consolidated", 2), ("dp", 4), ("tp", 4))}
    try:
        yield started, out
    finally:
        for ranks in started.values():
            ranks.stop()


_REFERENCES: dict[tuple[str, bool], tuple] = {}


def reference(kind: str, llama: bool = False) -> tuple[list[float], float, torch.nn.Module]:
    """One process, the same module (``llama``: made a Llama), data and Trainer settings: (losses,
    validation loss, module)."""
    if (kind, llama) not in _REFERENCES:
        _REFERENCES[kind, llama] = worker.fit(kind, None, worker.probe.STEPS, **(worker.LLAMA if llama else {}))
    return _REFERENCES[kind, llama]


def assert_follows(result: dict, kind: str, what: str, llama: bool = False) -> None:
    losses, val, _ = reference(kind, llama)
    assert len(result["losses"]) == len(losses) == worker.probe.STEPS, what
    gap = max(abs(a - b) for a, b in zip(result["losses"], losses))
    assert gap <= TOLERANCE, f"{what}: losses {result['losses']} vs one process {losses}"
    assert abs(result["val"] - val) <= TOLERANCE, f"{what}: validation loss {result['val']} vs {val}"
    assert losses[-1] < losses[0] - 0.05, "the reference did not train: the comparison would prove little"


def test_two_stages_follow_one_process_for_every_schedule_and_kind(runs):
    started, _ = runs
    results = started["schedules"].wait()
    for rank_result in results:  # every rank logs and returns the same loss (sent from the last stage)
        assert set(rank_result) == {f"{kind}/{schedule}" for kind, schedule in worker.RUNS}
        for key, result in rank_result.items():
            assert_follows(result, key.split("/")[0], f"pp 2 {key}")


@pytest.mark.parametrize("mode", ["dp", "tp"])
def test_pipeline_with_data_or_tensor_parallelism_on_four_processes_follows_one_process(runs, mode):
    started, _ = runs
    for rank, rank_result in enumerate(started[mode].wait()):
        assert set(rank_result) == {f"{kind}/{schedule}" for kind, schedule, _ in worker.RUNS_4[mode]}
        for key, result in rank_result.items():
            assert_follows(result, key.split("/")[0], f"{mode} 2 x pp 2 {key}, rank {rank}")


def test_a_killed_pipeline_run_resumes_from_its_checkpoint_folder_bitwise(runs):
    started, out = runs
    full = started["full"].wait()
    started["kill"].wait(expect_kill=True)
    folder = out / "ckpt-killed" / f"step{worker.EPOCH}.ckpt"
    assert folder.is_dir() and len(list(folder.glob("*.distcp"))) == 2, "a distributed checkpoint: one file per rank"
    assert not (out / "ckpt-killed" / f"step{2 * worker.EPOCH}.ckpt").exists(), "the kill came before the end"
    resumed = Ranks("resume", 2, out).wait()
    for rank in range(2):
        assert resumed[rank]["causal"]["losses"] == full[rank]["causal"]["losses"][worker.EPOCH:]
        assert resumed[rank]["causal"]["val"] == full[rank]["causal"]["val"]
        whole = load_file(out / f"full-weights-rank{rank}.safetensors")
        again = load_file(out / f"resume-weights-rank{rank}.safetensors")
        assert whole.keys() == again.keys() and whole
        for name in whole:
            assert torch.equal(whole[name], again[name]), f"rank {rank} {name} differs after the resume"
    stages = [set(load_file(out / f"full-weights-rank{rank}.safetensors")) for rank in range(2)]
    assert not stages[0] & stages[1], "each stage holds its own parameters"


def test_a_consolidated_checkpoint_is_one_file_that_load_checkpoint_and_export_read(runs, tmp_path):
    from llm_modules.checkpoint import load_checkpoint
    from llm_modules.cli import main as cli
    from llm_modules.hf import from_hf

    started, out = runs
    result = started["consolidated"].wait()[0]["causal"]
    assert_follows(result, "causal", "consolidated", llama=True)
    path = out / "consolidated" / f"step{worker.probe.STEPS}.ckpt"
    assert path.is_file()
    loaded = load_checkpoint(path)
    _, _, trained = reference("causal", llama=True)
    ids = worker.probe.batches("causal")[0][0]
    with torch.no_grad():
        expected = trained.model.eval()(ids)
        torch.testing.assert_close(loaded(ids), expected, rtol=0, atol=TOLERANCE)
    assert cli(["export", str(path), str(tmp_path / "hf")]) == 0
    with torch.no_grad():
        torch.testing.assert_close(from_hf(tmp_path / "hf")(ids), expected, rtol=0, atol=TOLERANCE)
