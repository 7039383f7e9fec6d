"""Pipeline parallelism on CPU processes, below Lightning (llm_modules.training.pipeline on
torch.distributed.pipelining): a tiny model cut into 2 stages on 2 gloo processes, 4 micro-batches,
5 AdamW steps with train_step/eval_step, follows the single-process loss curve within 1e-5 and ends
with its weights and validation loss, for CausalLM, PrefixLM (a prefix per row) and MaskedLM
(padding, masked tokens: micro-batches with different numbers of targets), and with gradients
clipped across the stages; gather_state_dict assembles the whole model. Every schedule and kind,
and pipeline x data or tensor parallelism, run through the Lightning strategy in
test_pipeline_strategy.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import _pipeline_worker as worker
from _fit_helpers import free_port, reap
from safetensors.torch import load_file

from llm_modules.nn.loss import cross_entropy

pytestmark = pytest.mark.multiprocess
TESTS = Path(__file__).resolve().parents[1]


def single_process_run(kind: str, max_grad_norm: float | None) -> tuple[list[float], list[float], dict, float]:
    """The reference: the whole model, the whole batch, the same optimizer: losses, gradient norms
    (before clipping), the trained weights and the loss on the held-out batch."""
    lm = worker.model(kind)
    opt = worker.optimizer(lm.parameters())
    losses, norms = [], []
    *train, (held_ids, held_targets, held_inputs) = worker.batches(kind)
    with torch.no_grad():
        held_out = cross_entropy(lm(held_ids, **held_inputs), held_targets).item()  # untrained: must differ
    for ids, targets, inputs in train:
        opt.zero_grad(set_to_none=True)
        loss = cross_entropy(lm(ids, **inputs), targets)
        loss.backward()
        norms.append(torch.nn.utils.clip_grad_norm_(lm.parameters(), max_grad_norm or float("inf")).item())
        opt.step()
        losses.append(loss.item())
    with torch.no_grad():
        trained = cross_entropy(lm(held_ids, **held_inputs), held_targets).item()
    assert trained != held_out
    return losses, norms, lm.state_dict(), trained


def run_ranks(world: int, out: Path, timeout: float = 120) -> list[dict]:
    """Start ``world`` worker processes, wait for all (killing every one on failure or timeout)."""
    port = free_port()
    path = os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    procs = [
        subprocess.Popen(
            [sys.executable, str(TESTS / "_pipeline_worker.py"), str(rank), str(world), str(port), str(out)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )
        for rank in range(world)
    ]
    outputs = []
    try:
        deadline = time.monotonic() + timeout
        for proc in procs:
            output, _ = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
            outputs.append(output)
    finally:
        for proc in procs:
            reap(proc)
    for proc, output in zip(procs, outputs):
        assert proc.returncode == 0, f"rank exited {proc.returncode}:\n{output[-6000:]}"
    return [json.loads((out / f"rank{rank}.json").read_text()) for rank in range(world)]


def test_two_stage_pipeline_follows_the_single_process_loss_curve_for_each_kind_and_schedule(tmp_path):
    first, last = run_ranks(2, tmp_path)
    for kind, name, clip in worker.RUNS:
        key = worker.run_name(kind, name, clip)
        reference, norms, weights, held_out = single_process_run(kind, clip)
        assert len(reference) == worker.STEPS and reference[-1] < reference[0], key  # it trains
        if clip is not None:
            assert min(norms) > clip, key  # clipping acts on every step
        assert first[key] == []  # only the last stage reports the loss
        assert first[f"{key}/blocks"] == [0, 2] and last[f"{key}/blocks"] == [2, 4]
        assert last[key] == pytest.approx(reference, abs=1e-5, rel=0), key
        assert first[f"{key}/eval"] is None and last[f"{key}/eval"] == pytest.approx(held_out, abs=1e-5, rel=0), key
        stages = [load_file(tmp_path / f"rank{rank}-{key.replace('/', '-')}.safetensors") for rank in (0, 1)]
        assert not stages[0].keys() & stages[1].keys() and stages[0].keys() | stages[1].keys() == weights.keys()
        # Adam moves a weight by about lr (1e-2) a step whatever its gradient's size, so an element whose gradient
        # is zero up to rounding moves by an amount rounding decides: compare each tensor as a whole (a missing or
        # doubled gradient would leave it off by a large part of its norm, since 5 steps of 1e-2 are ~ its init)
        for param, value in (stages[0] | stages[1]).items():
            off = (value - weights[param]).norm() / weights[param].norm()
            assert off < 1e-3, f"{key} {param}: off by {off:.2e} of its norm"
        # the whole model gathered on rank 0 is the stages' tensors together, and loads into the unsplit model
        full = load_file(tmp_path / f"full-{key.replace('/', '-')}.safetensors")
        assert full.keys() == weights.keys() and all(torch.equal(full[k], (stages[0] | stages[1])[k]) for k in full)
        worker.model(kind).load_state_dict(full, strict=True)


def test_the_bubble_benchmark_measures_idle_time_per_stage(tmp_path):
    """benchmarks/pipeline_bubble.py, shrunk to a smoke run: one row per schedule, m and stage, with
    the formula's figure and a measured idle fraction (its agreement is a benchmark, not a test: it
    needs a free core per stage)."""
    rows_file = tmp_path / "bubble.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = ["--d-model", "64", "--seq", "16", "--microbatches", "2", "4", "--steps", "1", "--warmup", "0",
            "--blocks-per-stage", "2",
            "--timeout", "120", "--json", str(rows_file)]
    proc = subprocess.run([sys.executable, str(TESTS.parent / "benchmarks" / "pipeline_bubble.py"), *args], env=env,
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = json.loads(rows_file.read_text())
    assert sorted((r["schedule"], r["microbatches"], r["stage"]) for r in rows) == [
        (s, m, stage) for s in ("1f1b", "gpipe") for m in (2, 4) for stage in (0, 1)
    ]
    for row in rows:
        assert row["expected"] == pytest.approx(1 / (row["microbatches"] + 1))
        assert row["forward_s"] > 0 and row["backward_s"] > 0 and 0 < row["idle"] < 1
    assert "expected" in proc.stdout and "gpipe" in proc.stdout
