"""Cutting a DecoderLM into pipeline stages (llm_modules.training.pipeline), in one process: the stages
run one after another compute the whole model, own its parameters once under the model's own names,
split by parameter count or an explicit list, and what cannot be split yet is refused with the reason."""

from __future__ import annotations

import pytest
import torch

import _pipeline_worker as worker
from llm_modules.nn.lm import EncoderDecoderLM
from llm_modules.registry import ConfigError
from llm_modules.training.pipeline import build_stage, check_schedule, split_blocks, stage_from_state

IDS = (torch.arange(2 * 12).reshape(2, 12) * 7) % worker.VOCAB


@pytest.mark.parametrize(
    "overrides",
    [
        {},  # learned positions: only the first stage adds them
        {"position": "rope", "layer_types": ["sliding", "full", "sliding", "full"], "sliding_window": 4},
        {"position": "alibi", "embedding_norm": True, "norm": "rmsnorm", "embedding_scale": 2.0},
    ],
    ids=["learned", "rope-sliding", "alibi-embedding-norm"],
)
@pytest.mark.parametrize("pp", [1, 2, 3])
def test_stages_in_a_row_compute_the_whole_model_and_own_its_parameters_once(pp, overrides):
    whole = worker.model(**overrides)
    expected = whole(IDS)
    names = dict(whole.named_parameters())
    stages = [build_stage(worker.model(**overrides), index, pp) for index in range(pp)]
    x = IDS
    for stage in stages:
        x = stage(x)
    torch.testing.assert_close(x, expected, rtol=0, atol=1e-6)
    owned = [name for stage in stages for name, _ in stage.named_parameters()]
    assert sorted(owned) == sorted(names)  # each parameter on exactly one stage, under the model's name
    for stage in stages:
        for name, p in stage.named_parameters():
            assert torch.equal(p, names[name])
    assert [len(stage.blocks) for stage in stages] == {1: [4], 2: [2, 2], 3: [1, 2, 1]}[pp]


@pytest.mark.parametrize("kind", ["prefix", "masked", "packed"])
def test_every_stage_rebuilds_the_mask_from_the_padding_prefix_or_documents_it_is_given(kind):
    if kind == "packed":  # causal rows of three packed documents each
        ids, _, inputs = worker.batches("causal")[0]
        inputs = {"document_ids": (torch.arange(ids.shape[1]) * 3 // ids.shape[1]).expand_as(ids)}
        kind = "causal"
    else:
        ids, _, inputs = worker.batches(kind)[0]
    expected = worker.model(kind)(ids, **inputs)
    x = ids
    for index in range(2):
        x = build_stage(worker.model(kind), index, 2)(x, **inputs)
    torch.testing.assert_close(x, expected, rtol=0, atol=1e-6)


def test_the_default_split_balances_parameters_so_big_embeddings_get_fewer_blocks():
    lm = worker.model(vocab_size=4096, n_layers=6)  # embedding and head each ~10 blocks' worth
    assert [len(r) for r in split_blocks(lm, 3)] == [1, 4, 1]
    assert [len(r) for r in split_blocks(worker.model(n_layers=6), 3)] == [2, 2, 2]
    assert split_blocks(lm, 3, [2, 3, 1]) == [range(0, 2), range(2, 5), range(5, 6)]


@pytest.mark.parametrize("blocks", [[2, 2], [1, 1, 1], [0, 3, 3], [3, 3, 1]])
def test_an_explicit_split_must_cover_the_blocks(blocks):
    expected = r"must list 3 counts \(one per stage\), each at least 1, adding up to the model's 6"
    with pytest.raises(ConfigError, match=expected):
        split_blocks(worker.model(n_layers=6), 3, blocks)


@pytest.mark.parametrize(
    ("build", "pp", "reason"),
    [
        (lambda: worker.model(tie_embeddings=True), 2, "tie_embeddings: the head would share its weight"),
        (lambda: worker.model(position="t5"), 2, "T5RelativeBias has parameters that every block reads"),
        (lambda: worker.model(activation={"name": "moe", "n_experts": 2}), 2, "MoE layer's auxiliary"),
        (lambda: worker.model(), 5, "5 pipeline stages .* are more than the model.s 4 blocks"),
        (lambda: EncoderDecoderLM(worker.model(n_encoder_layers=2).config), 1, "not a EncoderDecoderLM"),
    ],
    ids=["tied", "t5", "moe", "too-many-stages", "seq2seq"],
)
def test_what_cannot_be_split_yet_is_refused_with_the_reason(build, pp, reason):
    with pytest.raises(ConfigError, match=reason):
        build_stage(build(), 0, pp)


def test_a_single_stage_keeps_tied_embeddings():
    stage = build_stage(worker.model(tie_embeddings=True), 0, 1)
    torch.testing.assert_close(stage(IDS), worker.model(tie_embeddings=True)(IDS), rtol=0, atol=0)


@pytest.mark.parametrize(
    ("schedule", "microbatches", "reason"),
    [
        ("zb", 4, "pipeline schedule 'zb' is not one of gpipe, 1f1b"),
        ("gpipe", 0, "microbatches must be at least 1"),
        ("1f1b", 1, "schedule 1f1b needs at least as many microbatches as pipeline ranks \\(2\\), got 1; raise"),
    ],
)
def test_a_schedule_that_cannot_run_is_refused(schedule, microbatches, reason):
    with pytest.raises(ConfigError, match=reason):
        check_schedule(schedule, microbatches, 2)
    check_schedule("gpipe", 1, 2)


def test_a_stage_built_from_a_state_dict_holds_only_its_own_weights():
    trained = worker.model(position="rope")  # stands for trained weights: others than a fresh build's
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    state = trained.state_dict()
    stages = [stage_from_state(lambda: worker.model(position="rope"), i, 2, state) for i in range(2)]
    for stage in stages:
        assert not any(t.is_meta for t in [*stage.parameters(), *stage.buffers()])
        assert sum(p.numel() for p in stage.parameters()) < sum(p.numel() for p in trained.parameters()) * 0.7
    torch.testing.assert_close(stages[1](stages[0](IDS)), trained(IDS), rtol=0, atol=1e-6)
    del state["stack.layers.3.ffn.fc1.weight" if "stack.layers.3.ffn.fc1.weight" in state else
              next(k for k in state if k.startswith("stack.layers.3."))]
    with pytest.raises(ConfigError, match="run.safetensors: the checkpoint"):
        stage_from_state(lambda: worker.model(position="rope"), 1, 2, state, where="run.safetensors")
    stage_from_state(lambda: worker.model(position="rope"), 0, 2, state)  # stage 0 needs none of block 3
