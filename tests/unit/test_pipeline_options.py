"""Pipeline options without processes: several stages per rank (interleaved schedules) compute the
whole model and own each parameter once; the strategy's sizes, schedules and stages per rank are
checked with one-line reasons; and the LightningModules that pipeline stages cannot train are refused."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import _pipeline_worker as worker
from llm_modules.registry import ConfigError
from llm_modules.training.pipeline import (
    SCHEDULES, balanced_counts, build_stages, check_schedule, split_blocks, stage_ids, stages_per_rank,
)
from llm_modules.training.pipeline.runner import PipelineRun, PipelineSettings
from llm_modules.training.pipeline_strategy import PipelineParallelStrategy, mesh_sizes

IDS = (torch.arange(2 * 12).reshape(2, 12) * 5) % worker.VOCAB


@pytest.mark.parametrize(("pp", "virtual"), [(2, 2), (2, 3), (3, 2)])
def test_interleaved_ranks_hold_looped_stages_that_compute_the_whole_model(pp, virtual):
    overrides = {"n_layers": pp * virtual}
    whole = worker.model(**overrides)
    expected = whole(IDS)
    held = [stage_ids(rank, pp, virtual) for rank in range(pp)]
    assert held[0] == [k * pp for k in range(virtual)]  # rank r: stages r, r + pp, ...
    ranks = [build_stages(worker.model(**overrides), ids, pp * virtual) for ids in held]
    by_index = {stage.index: stage for stages in ranks for stage in stages}
    x = IDS
    for index in range(pp * virtual):
        x = by_index[index](x)
    torch.testing.assert_close(x, expected, rtol=0, atol=1e-6)
    for stages in ranks:
        names = [name for stage in stages for name, _ in stage.named_parameters()]
        assert len(names) == len(set(names)), "a rank's stages share no parameter"
    owned = sorted(name for stages in ranks for stage in stages for name, _ in stage.named_parameters())
    assert owned == sorted(name for name, _ in whole.named_parameters())


def test_a_pruned_model_keeps_only_its_ranks_parameters_under_the_whole_models_names():
    lm = worker.model()
    names = {name for name, _ in lm.named_parameters()}
    stages = build_stages(lm, [1], 2)
    kept = {name for name, _ in lm.named_parameters()}
    assert kept == {name for name, _ in stages[0].named_parameters()} and kept < names
    assert lm.embed is None and not any(name.startswith("embed.") for name in kept)


def test_balanced_counts_minimize_the_largest_stage():
    assert balanced_counts([1] * 8, 4) == [2, 2, 2, 2]
    assert balanced_counts([1] * 8, 2, first=4) == [2, 6]  # a big embedding takes blocks off the first stage
    assert balanced_counts([5, 1, 1, 1, 1, 1], 2) == [1, 5]
    with pytest.raises(ConfigError, match="cannot each hold at least one"):
        balanced_counts([1, 1], 3)


def test_split_by_blocks_follows_the_parameter_balance():
    ranges = split_blocks(worker.model(n_layers=6), 3)
    assert [len(r) for r in ranges] == balanced_counts(
        [sum(p.numel() for p in layer.parameters()) for layer in worker.model(n_layers=6).stack.layers], 3,
        first=sum(p.numel() for p in worker.model().embed.parameters())
        + sum(p.numel() for p in worker.model().stack.position.parameters()),
        last=sum(p.numel() for p in worker.model().head.parameters())
        + sum(p.numel() for p in worker.model().stack.final_norm.parameters()))


@pytest.mark.parametrize(
    ("schedule", "virtual", "reason"),
    [
        ("gpipe", 2, "virtual_stages: schedule gpipe runs 1 stage per rank"),
        ("interleaved-1f1b", 1, "virtual_stages: schedule interleaved-1f1b needs at least 2 stages per rank"),
        ("1f1b-interleaved", None, "is not one of .* \\(did you mean 'interleaved-1f1b'\\?\\)"),
    ],
)
def test_stages_per_rank_must_suit_the_schedule(schedule, virtual, reason):
    with pytest.raises(ConfigError, match=reason):
        stages_per_rank(schedule, virtual)


def test_schedule_defaults_and_micro_batch_rules():
    assert stages_per_rank("interleaved-zero-bubble", None) == 2 and stages_per_rank("1f1b", None) == 1
    assert set(SCHEDULES) == {"gpipe", "1f1b", "interleaved-1f1b", "interleaved-zero-bubble"}
    with pytest.raises(ConfigError, match="interleaved-1f1b needs microbatches that split into rounds of 4"):
        check_schedule("interleaved-1f1b", 9, 4, 2)
    assert check_schedule("interleaved-1f1b", 8, 4, 2) == 2
    with pytest.raises(ConfigError, match="interleaved-zero-bubble needs at least as many microbatches"):
        check_schedule("interleaved-zero-bubble", 1, 2, 2)


@pytest.mark.parametrize(
    ("sizes", "world", "expected"),
    [(("auto", "auto", 1), 4, (1, 4, 1)), (("auto", 2, 1), 8, (4, 2, 1)), ((2, "auto", 2), 8, (2, 2, 2)),
     (("auto", "auto", 2), 8, (1, 4, 2))],
)
def test_auto_sizes_fill_the_processes(sizes, world, expected):
    assert mesh_sizes(*sizes, world) == expected


@pytest.mark.parametrize(
    ("sizes", "world", "reason"),
    [(("auto", 3, 1), 4, "pipeline_parallel_size 3 x tensor_parallel_size 1 does not divide the 4 processes"),
     ((2, 2, 2), 4, "data_parallel_size 2 x pipeline_parallel_size 2 x tensor_parallel_size 2 does not divide"),
     ((1, 2, 1), 4, "data_parallel_size 1 x pipeline_parallel_size 2 x tensor_parallel_size 1 must equal the 4"),
     (("auto", 0, 1), 4, "pipeline_parallel_size must be a positive integer or auto, got 0"),
     (("auto", "auto", 0), 4, "tensor_parallel_size must be a positive integer, got 0")],
)
def test_sizes_that_do_not_fit_are_refused_in_one_line(sizes, world, reason):
    with pytest.raises(ConfigError, match=reason):
        mesh_sizes(*sizes, world)


def test_the_strategy_checks_its_options_before_starting_processes():
    strategy = PipelineParallelStrategy(pipeline_parallel_size=2, schedule="gpipe", virtual_stages=2)
    with pytest.raises(ConfigError, match="virtual_stages: schedule gpipe"):
        strategy.check_options(world=2)
    PipelineParallelStrategy(pipeline_parallel_size=2, schedule="interleaved-1f1b").check_options(world=4)


def _attached(lm, accumulate: int = 1):
    lm._trainer = SimpleNamespace(accumulate_grad_batches=accumulate)
    return lm


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda: _attached(__import__("llm_modules").Seq2SeqLM(config=worker.model(n_encoder_layers=2).config)),
         "Seq2SeqLM computes its own loss|does not run as pipeline stages"),
        (lambda: _attached(__import__("llm_modules").CausalLM(
            config=worker.model().config, evaluation={"metrics": ["exact_match"]})), "model.evaluation: generation"),
        (lambda: _attached(__import__("llm_modules").CausalLM(config=worker.model().config), accumulate=2),
         "trainer.accumulate_grad_batches=2: a pipeline step already accumulates"),
    ],
    ids=["seq2seq", "generation-metrics", "accumulation"],
)
def test_what_pipeline_stages_cannot_train_is_refused(make, reason):
    with pytest.raises(ConfigError, match=reason):
        PipelineRun(make(), mesh=None, settings=PipelineSettings(size=2), device=torch.device("cpu"))


def test_only_token_cross_entropy_kinds_declare_themselves_ready():
    from llm_modules import CausalLM, MaskedLM, PrefixLM, Seq2SeqLM
    from llm_modules.alignment.ppo import PPO
    from llm_modules.alignment.preference import PreferenceModel

    assert CausalLM.pipeline_ready and PrefixLM.pipeline_ready and MaskedLM.pipeline_ready
    assert not (Seq2SeqLM.pipeline_ready or PPO.pipeline_ready or PreferenceModel.pipeline_ready)


def test_a_flops_balance_frees_the_embedding_and_charges_the_heads_matmul():
    """A large vocabulary: by parameters the embedding and the head weigh the same, so the two stages
    split the blocks evenly; by FLOPs the lookup is free and the head's projection is not, so the
    first stage takes more blocks."""
    lm = worker.model(n_layers=8, vocab_size=4096)
    by_params = [len(r) for r in split_blocks(lm, 2)]
    by_flops = [len(r) for r in split_blocks(lm, 2, balance="flops", seq_len=16)]
    assert by_params == [4, 4]
    assert by_flops[0] > by_flops[1] and sum(by_flops) == 8
    with pytest.raises(ConfigError, match="pipeline balance 'time' is not one of params, flops"):
        split_blocks(lm, 2, balance="time")
