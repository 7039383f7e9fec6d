"""``estimate --pp``: the runtime's stage split, the schedules' in-flight micro-batches and bubbles,
memory per pipeline rank, the layout search, and the command's refusals and JSON.

The comparison with measured per-stage peaks of gloo CPU processes is ``benchmarks/pipeline_memory.py``.
"""

from __future__ import annotations

import json

import pytest
import torch

from llm_modules.cli import main
from llm_modules.config import ModelConfig
from llm_modules.estimate.layout import Cluster, search
from llm_modules.estimate.memory import Setup
from llm_modules.estimate.pipeline import Pipeline, bubble_formula, estimate_pipeline, stage_blocks
from llm_modules.estimate.schedule_order import in_flight, schedule_order, simulate
from llm_modules.nn.lm import DecoderLM
from llm_modules.training.pipeline.split import split_blocks

# a large vocabulary makes the first and last stage heavy, so the balanced split is uneven
TINY = dict(vocab_size=4096, d_model=64, n_layers=8, n_heads=4, max_seq_len=64, position="rope",
            tie_embeddings=False, dropout=0.0)


def cfg(**overrides) -> ModelConfig:
    return ModelConfig(**{**TINY, **overrides})


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["estimate", *argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("stages", [2, 3, 4, 8])
def test_the_stage_split_is_the_runtimes(stages):
    config = cfg()
    expected = [list(r) for r in split_blocks(DecoderLM(config), stages)]
    assert stage_blocks(config, "causal", stages) == expected
    assert len(expected[0]) < len(expected[len(expected) // 2]) or stages in (2, 8)  # the embedding weighs
    est = estimate_pipeline(config, "causal", Setup(strategy="fsdp", batch_size=4, seq_len=32, device="cpu"),
                            Pipeline(stages, "gpipe", 4))
    assert [r.blocks[0] for r in est.ranks] == expected


def test_the_flops_balance_is_the_runtimes_too(capsys, tmp_path):
    config = cfg()
    by_flops = [list(r) for r in split_blocks(DecoderLM(config), 4, None, "flops", 32)]
    assert stage_blocks(config, "causal", 4, None, "flops", 32) == by_flops != stage_blocks(config, "causal", 4)
    path = tmp_path / "model.yaml"
    path.write_text(json.dumps(TINY))
    code, out, err = run_cli(capsys, "--config", str(path), "--seq-len", "32", "--batch-size", "8", "--pp", "4",
                             "--balance", "flops", "--format", "json")
    assert code == 0, err
    p = json.loads(out)["pipeline"]
    assert p["stage_blocks"] == by_flops and p["balance"] == "flops"
    assert p["microbatches"] == 4  # one per stage by default, as the strategy
    code, out, err = run_cli(capsys, "--config", str(path), "--seq-len", "32", "--batch-size", "8", "--pp", "2",
                             "--schedule", "interleaved-1f1b", "--format", "json")
    assert code == 0, err
    assert json.loads(out)["pipeline"]["microbatches"] == 4  # 2 ranks x 2 stages each


@pytest.mark.parametrize("pp, m", [(2, 2), (2, 4), (4, 4), (4, 8), (3, 7)])
def test_in_flight_gpipe_keeps_every_microbatch_1f1b_at_most_p_minus_s(pp, m):
    assert in_flight(schedule_order("gpipe", pp, m, 1)) == dict.fromkeys(range(pp), m)
    assert in_flight(schedule_order("1f1b", pp, m, 1)) == {s: min(m, pp - s) for s in range(pp)}


def test_in_flight_of_the_multi_stage_schedules_comes_from_torchs_order():
    """Interleaved 1F1B's first stages hold more micro-batches than its later ones; the zero-bubble
    schedules free a micro-batch at its weight pass (W), not at its input pass (I)."""
    order = schedule_order("interleaved-1f1b", 2, 4, 2)
    assert sorted(order) == [0, 1] and {a.stage for a in order[0]} == {0, 2}
    assert in_flight(order) == {0: 4, 1: 3, 2: 2, 3: 1}
    order = schedule_order("interleaved-zero-bubble", 4, 8, 2)
    ops = {a.op for actions in order.values() for a in actions}
    assert ops == {"F", "I", "W"}
    counts = in_flight(order)
    assert set(counts) == set(range(8)) and max(counts.values()) <= 8 and min(counts.values()) >= 1


@pytest.mark.parametrize("pp, m", [(2, 1), (2, 4), (4, 4), (4, 8), (8, 16)])
def test_simulated_bubble_is_the_formula_for_gpipe_and_1f1b(pp, m):
    expected = (pp - 1) / (m + pp - 1)
    for name in ("gpipe", "1f1b"):
        if name == "1f1b" and m < pp:
            continue
        idle = simulate(schedule_order(name, pp, m, 1))
        assert all(value == pytest.approx(expected) for value in idle.values())
        assert bubble_formula(name, pp, m, 1)[0] == pytest.approx(expected)


@pytest.mark.parametrize("pp, m, v", [(2, 4, 2), (4, 8, 2), (4, 16, 2), (2, 4, 4)])
def test_interleaving_divides_the_bubble_by_the_virtual_stages(pp, m, v):
    idle = simulate(schedule_order("interleaved-1f1b", pp, m, v))
    expected = (pp - 1) / (v * m + pp - 1)
    assert max(idle.values()) == pytest.approx(expected)
    assert bubble_formula("interleaved-1f1b", pp, m, v)[0] == pytest.approx(expected)
    zero = max(simulate(schedule_order("interleaved-zero-bubble", pp, m, v)).values())
    assert zero < expected


def test_memory_per_rank_follows_the_schedule():
    config = cfg(n_layers=4)
    setup = Setup(strategy="fsdp", batch_size=8, seq_len=64, device="cpu")
    gpipe = estimate_pipeline(config, "causal", setup, Pipeline(2, "gpipe", 4))
    one = estimate_pipeline(config, "causal", setup, Pipeline(2, "1f1b", 4))
    whole = sum(p.numel() for p in DecoderLM(config).parameters())
    assert sum(r.parameters for r in gpipe.ranks) == whole
    assert sum(r.weights for r in gpipe.ranks) == 4 * whole  # fp32
    for g, o in zip(gpipe.ranks, one.ranks):
        assert g.weights == o.weights and g.optimizer == o.optimizer == 2 * g.weights
        mb = g.microbatch_activations[g.stages[0]]
        assert g.activations == pytest.approx(4 * mb)  # GPipe: all four micro-batches
        assert o.activations == pytest.approx(min(4, 2 - o.rank) * mb)  # 1F1B: p - s of them
        assert g.peak >= o.peak
    # the training step does not ask the schedule for the last stage's logits, which it would keep for
    # every micro-batch to the end of the step and concatenate
    assert one.ranks[-1].kept_outputs == 0
    # a batch the micro-batches do not divide is filled up: 7 rows cost what 8 do
    filled = estimate_pipeline(config, "causal", Setup(strategy="fsdp", batch_size=7, seq_len=64, device="cpu"),
                               Pipeline(2, "1f1b", 4))
    assert filled.microbatch_rows == 2 and [r.peak for r in filled.ranks] == [r.peak for r in one.ranks]
    # data parallelism shards the model states
    sharded = estimate_pipeline(config, "causal", Setup(strategy="fsdp", devices=4, batch_size=8, seq_len=64,
                                                        device="cpu"), Pipeline(2, "1f1b", 4))
    assert sharded.ranks[0].optimizer == pytest.approx(one.ranks[0].optimizer / 4)


def test_layout_search_pipelines_a_model_that_fits_no_single_device():
    config = cfg(n_layers=8)
    setup = Setup(precision="32-true", seq_len=64, device="cuda")
    roomy = Cluster(1, 4, memory=1e12, peak_flops=1e12)
    best = search(config, "causal", setup, roomy, 8, 1e6, 0.5)["best"]
    assert best[0]["pp"] == 1 and best[0]["bubble"] == 0  # everything fits: no pipeline bubble to pay
    assert best[0]["dp"] * best[0]["tp"] == 4
    # memory below what the data-parallel layout needs: only layouts that cut the model fit
    every = search(config, "causal", setup, roomy, 8, 1e6, 0.5, top=1000)["best"]
    plain = next(r["peak"] for r in every if r["pp"] == r["tp"] == 1)
    cut = min(r["peak"] for r in every)
    assert cut < plain
    tight = Cluster(1, 4, memory=(plain + cut) / 2, peak_flops=1e12)
    result = search(config, "causal", setup, tight, 8, 1e6, 0.5)
    assert result["fitting"] and all(r["pp"] * r["tp"] >= 2 for r in result["best"])
    assert all(r["peak"] <= tight.memory for r in result["best"])
    times = [r["step_seconds"] for r in result["best"]]
    assert times == sorted(times)


@pytest.mark.parametrize("argv, fragments", [
    (["--pp", "9"], ["9 pipeline stages", "8 blocks", "lower --pp"]),
    (["--pp", "4", "--microbatches", "2", "--batch-size", "4"], ["1f1b needs at least as many microbatches",
                                                                  "(4)"]),
    (["--pp", "2", "--schedule", "gpip"], ["'gpip'", "did you mean 'gpipe'"]),
    (["--pp", "2", "--microbatches", "4", "--batch-size", "8", "--accumulate", "2"],
     ["--accumulate with --pp", "--microbatches together"]),
    (["--schedule", "gpipe"], ["--schedule is a pipeline option", "--pp"]),
    (["--pp", "2", "--batch-size", "2", "--strategy", "zero2"], ["--strategy zero2 with --pp", "FSDP2"]),
    (["--pp", "2", "--batch-size", "2", "--tp", "3"], ["--tp 3 must divide", "4 attention heads"]),
    (["--pp", "2", "--schedule", "gpipe", "--virtual-stages", "2", "--batch-size", "2"],
     ["schedule gpipe runs 1 stage", "--virtual-stages 1"]),
    (["--cluster", "2by8"], ["--cluster '2by8'", "2x8"]),
    (["--pp", "2", "--schedule", "interleaved-zero-bubble", "--microbatches", "5", "--batch-size", "5"],
     ["interleaved-zero-bubble cannot run 5 micro-batches on 2 ranks", "multiple of 2"]),
])
def test_pipeline_refusals_are_one_line_and_exit_code_2(capsys, tmp_path, argv, fragments):
    path = tmp_path / "model.yaml"
    path.write_text(json.dumps(TINY))
    code, _out, err = run_cli(capsys, "--config", str(path), "--seq-len", "32", *argv)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_a_cluster_search_without_any_layout_says_why(capsys, tmp_path):
    path = tmp_path / "model.yaml"
    path.write_text(json.dumps({**TINY, "d_model": 48, "n_heads": 3}))
    base = ["--config", str(path), "--seq-len", "32", "--cluster", "1x2"]
    code, _out, err = run_cli(capsys, *base, "--global-batch", "1")
    assert code == 2 and "no layout splits 1 rows" in err and len(err.strip().splitlines()) == 1
    code, _out, err = run_cli(capsys, *base, "--global-batch", "2", "--gpu-memory", "0.0001")
    assert code == 2 and "fits 0 GiB per GPU; the smallest peak is" in err and len(err.strip().splitlines()) == 1


def test_a_cluster_search_skips_the_microbatch_counts_torch_refuses(capsys, tmp_path):
    """5 rows on 2 ranks: torch's zero-bubble schedule refuses 5 micro-batches (not a whole number
    of rounds of 2), which the runtime's check lets through; that layout is left out (it ended the
    search with torch's traceback), the others still ranked."""
    path = tmp_path / "model.yaml"
    path.write_text(json.dumps(TINY))
    code, out, err = run_cli(capsys, "--config", str(path), "--seq-len", "32", "--cluster", "1x2",
                             "--global-batch", "5", "--top", "100", "--format", "json")
    assert code == 0, err
    layouts = json.loads(out)["layouts"]
    assert any("interleaved-zero-bubble cannot run 5 micro-batches" in r for r in layouts["refused"])
    assert {r["schedule"] for r in layouts["best"]} == {None, "gpipe", "1f1b"}


def test_tied_embeddings_are_refused_with_the_runtimes_reason(capsys, tmp_path):
    path = tmp_path / "model.yaml"
    path.write_text(json.dumps({**TINY, "tie_embeddings": True}))
    code, _out, err = run_cli(capsys, "--config", str(path), "--pp", "2", "--batch-size", "2")
    assert code == 2 and "tie_embeddings" in err and len(err.strip().splitlines()) == 1


def test_json_and_table_report_every_rank(capsys, tmp_path):
    path = tmp_path / "model.yaml"
    path.write_text(json.dumps(TINY))
    base = ["--config", str(path), "--seq-len", "32", "--batch-size", "8", "--device", "cpu"]
    code, out, err = run_cli(capsys, *base, "--pp", "2", "--schedule", "interleaved-1f1b", "--microbatches", "4",
                             "--format", "json", "--cluster", "1x4", "--gpu-memory", "1")
    assert code == 0, err
    report = json.loads(out)
    p = report["pipeline"]
    assert (p["pp"], p["schedule"], p["microbatches"], p["virtual_stages"], p["microbatch_rows"]) == \
        (2, "interleaved-1f1b", 4, 2, 2)
    assert p["bubble"] == pytest.approx(1 / (2 * 4 + 1)) and p["bubble_formula"] == pytest.approx(p["bubble"])
    assert len(p["ranks"]) == 2 and [r["stages"] for r in p["ranks"]] == [[0, 2], [1, 3]]
    for rank in p["ranks"]:
        assert {"weights", "gradients", "optimizer", "activations", "in_flight", "peak", "peak_phase"} <= set(rank)
        assert rank["peak"] >= rank["model_states"]
    assert p["step"]["seconds"] > p["step"]["compute_seconds"] > 0
    assert "memory" not in report and report["time"]["bubble"] == p["bubble"]
    layouts = report["layouts"]
    assert layouts["fitting"] >= 1 and layouts["best"][0]["dp"] * layouts["best"][0]["pp"] * \
        layouts["best"][0]["tp"] == 4
    code, out, err = run_cli(capsys, *base, "--pp", "2", "--microbatches", "4")
    assert code == 0, err
    assert "memory per pipeline rank" in out and "(p-1)/(m+p-1)" in out and "peak" in out


@pytest.mark.parametrize("strategy, expected", [
    ({"class_path": "llm_modules.training.pipeline_strategy.PipelineParallelStrategy",
      "init_args": {"pipeline_parallel_size": 2, "schedule": "gpipe", "microbatches": 4}},
     {"devices": 2, "pp": 2, "tp": 1, "schedule": "gpipe", "microbatches": 4}),
    ({"class_path": "lightning.pytorch.strategies.ModelParallelStrategy",
      "init_args": {"data_parallel_size": "auto", "tensor_parallel_size": "auto"}},
     {"devices": 1, "pp": 1, "tp": 4, "schedule": "1f1b", "microbatches": 1}),
])
def test_a_fit_config_with_the_pipeline_or_tensor_parallel_strategy_supplies_the_layout(capsys, tmp_path, strategy,
                                                                                        expected):
    path = tmp_path / "fit.yaml"
    path.write_text(json.dumps({
        "model": {"class_path": "llm_modules.CausalLM", "init_args": {"config": TINY}},
        "data": {"init_args": {"seq_len": 32, "batch_size": 8}},
        "trainer": {"devices": 4, "strategy": strategy},
    }))
    code, out, err = run_cli(capsys, "--config", str(path), "--format", "json")
    assert code == 0, err
    report = json.loads(out)
    p = report["pipeline"]
    got = {"devices": report["setup"]["devices"], "pp": p["pp"], "tp": p["tp"], "schedule": p["schedule"],
           "microbatches": p["microbatches"]}
    assert got == expected and report["setup"]["strategy"] == "fsdp"
    code, out, err = run_cli(capsys, "--config", str(path), "--format", "json", "--blocks", "3,5", "--pp", "2")
    assert code == 0, err
    assert json.loads(out)["pipeline"]["blocks_per_stage"] == [3, 5]


def test_a_zero_bubble_input_pass_keeps_the_op_output_gradients_until_the_weight_pass():
    """What a zero-bubble input pass keeps for the weight pass: the output gradient of every op that
    uses a parameter (a block's linear layers' widths and its norms'), held until W."""
    from llm_modules.estimate.pipeline import _widths

    config = cfg(n_layers=4)
    block = DecoderLM(config).stack.layers[0]
    linears = sum(m.out_features for m in block.modules() if hasattr(m, "out_features"))
    norms = sum(m.weight.numel() for m in block.modules() if isinstance(m, torch.nn.LayerNorm))
    assert _widths(block) == linears + norms and linears > 4 * 64
    # a rank's walk: the input pass of micro-batch 0 keeps its pending bytes until its weight pass
    from llm_modules.estimate.activations import Activations
    from llm_modules.estimate.pipeline import _Stage, _walk
    from llm_modules.estimate.schedule_order import Action

    acts = Activations(blocks=0, block=0, block_inputs=0, outside=0, forward_transient=0, backward_transient=0)
    stage = _Stage(1, parameters=10, units=[(40.0, 100.0)], activations=100.0, pending=1000.0, last=False)
    walk = [Action("F", 1, 0), Action("F", 1, 1), Action("I", 1, 0), Action("W", 1, 0), Action("F", 1, 2)]
    phases, most = _walk(walk, {1: stage}, base=0.0, logits=0.0, acts=acts, grad=4.0)
    assert most == 200.0
    assert phases["backward"] == 200.0 + 1000.0 + 40.0  # both micro-batches, the pending bytes, new gradients
    assert phases["forward"] == 200.0 + 40.0  # after W: two micro-batches alive again, gradients, nothing pending
