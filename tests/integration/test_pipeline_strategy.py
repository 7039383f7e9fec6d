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
    """The worker's processes of one launch (a mode, or several in turn), started now and awaited later."""

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
        self.done = False

    def wait(self, timeout: float = 400, expect_kill: bool = False) -> None:
        """Until every process has exited: 0, or with ``expect_kill`` killed by SIGKILL."""
        if not self.done:
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
            self.done = True

    def result(self, mode: str) -> list[dict]:
        """Each rank's results of ``mode`` (one of this launch's)."""
        self.wait()
        return [json.loads((self.out / f"{mode}-rank{rank}.json").read_text()) for rank in range(len(self.procs))]

    def stop(self) -> None:
        for proc in self.procs:
            reap(proc)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("pipeline_strategy")
    started = {launch: Ranks(launch, world, out) for launch, world in (("two", 2), ("kill", 2), ("four", 4))}
    try:
        yield started, out
    finally:
        for ranks in started.values():
            ranks.stop()


_REFERENCES: dict[tuple[str, str | None, bool], tuple] = {}


def reference(kind: str, extra: str | None = None, llama: bool = False) -> tuple:
    """One process, the same module (``llama``: made a Llama; ``extra``: a key of the worker's
    EXTRA), data and Trainer settings: (losses, validation loss, module, gradient norms)."""
    key = (kind, extra, llama)
    if key not in _REFERENCES:
        _REFERENCES[key] = worker.fit(kind, None, worker.probe.STEPS, extra=worker.EXTRA.get(extra),
                                      **(worker.LLAMA if llama else {}))
    return _REFERENCES[key]


def assert_follows(result: dict, kind: str, what: str, extra: str | None = None, llama: bool = False) -> None:
    losses, val, _, norms = reference(kind, extra, llama)
    assert len(result["losses"]) == len(losses) == worker.probe.STEPS, what
    gap = max(abs(a - b) for a, b in zip(result["losses"], losses))
    assert gap <= TOLERANCE, f"{what}: losses {result['losses']} vs one process {losses}"
    assert abs(result["val"] - val) <= TOLERANCE, f"{what}: validation loss {result['val']} vs {val}"
    if "norms" in result:  # train/grad_norm: over every stage's gradients
        gap = max(abs(a - b) for a, b in zip(result["norms"], norms))
        assert gap <= TOLERANCE * max(norms), f"{what}: gradient norms {result['norms']} vs one process {norms}"
    # the reference trained (the loss fell; with LoRA's few parameters it at least moved): otherwise the
    # comparison would prove little
    assert losses[-1] < losses[0] - 0.05 if extra is None else len(set(losses)) == len(losses), what


def test_two_stages_follow_one_process_for_every_schedule_and_kind_with_clipping_and_lora(runs):
    started, _ = runs
    results = started["two"].result("schedules")
    for rank_result in results:  # every rank logs and returns the same loss (sent from the last stage)
        assert set(rank_result) == {f"{kind}/{schedule}" for kind, schedule in worker.RUNS} | set(worker.EXTRA)
        for key, result in rank_result.items():
            assert_follows(result, key.split("/")[0], f"pp 2 {key}", extra=key if key in worker.EXTRA else None)
    refused = reference("causal", "causal/1f1b/spike")[1]
    assert refused != reference("causal")[1], "the spike guard refused nothing: the run would prove nothing"


@pytest.mark.parametrize("mode", ["dp", "tp"])
def test_pipeline_with_data_or_tensor_parallelism_on_four_processes_follows_one_process(runs, mode):
    started, _ = runs
    for rank, rank_result in enumerate(started["four"].result(mode)):
        assert set(rank_result) == {f"{kind}/{schedule}" for kind, schedule, _ in worker.RUNS_4[mode]}
        for key, result in rank_result.items():
            assert_follows(result, key.split("/")[0], f"{mode} 2 x pp 2 {key}, rank {rank}")


def test_a_killed_pipeline_run_resumes_from_its_checkpoint_folder_bitwise(runs):
    started, out = runs
    full = started["two"].result("full")
    started["kill"].wait(expect_kill=True)
    folder = out / "ckpt-killed" / f"step{worker.EPOCH}.ckpt"
    assert folder.is_dir() and len(list(folder.glob("*.distcp"))) == 2, "a distributed checkpoint: one file per rank"
    assert not (out / "ckpt-killed" / f"step{2 * worker.EPOCH}.ckpt").exists(), "the kill came before the end"
    resumed = Ranks("resume", 2, out).result("resume")
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
    result = started["two"].result("consolidated")[0]["causal"]
    assert_follows(result, "causal", "consolidated", llama=True)
    path = out / "consolidated" / f"step{worker.probe.STEPS}.ckpt"
    assert path.is_file()
    loaded = load_checkpoint(path)
    trained = reference("causal", llama=True)[2]
    ids = worker.probe.batches("causal")[0][0]
    with torch.no_grad():
        expected = trained.model.eval()(ids)
        torch.testing.assert_close(loaded(ids), expected, rtol=0, atol=TOLERANCE)
    assert cli(["export", str(path), str(tmp_path / "hf")]) == 0
    with torch.no_grad():
        torch.testing.assert_close(from_hf(tmp_path / "hf")(ids), expected, rtol=0, atol=TOLERANCE)
