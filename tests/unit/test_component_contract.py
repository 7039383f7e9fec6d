"""The component contract, checked for every registered name of every model slot (plugins included).

The cases are read from the registry when the tests are collected, so a new component (a core one or
a plugin's) is covered by adding it, and no list here names one. For each ``(slot, name)``, a tiny
model with that component (every other slot at the tiny default):

- builds on the meta device with the same parameter and buffer shapes as on the CPU;
- runs forward and backward on the CPU, with finite logits and a finite gradient for every trainable
  parameter (except inside a module that declares ``routes_tokens``: an expert no token chose has
  none); a component that declares it cannot, ``runs_on_cpu = False`` or ``cpu_backward = False``,
  is skipped there with its declaration as the reason);
- survives a state-dict round trip: saved, loaded (``weights_only``) into a model built with other
  random weights, it gives the same logits;
- declares a tensor-parallel plan or a refusal: a plan names existing linear/embedding children,
  its divisibility rules cover every dimension it splits, and a refusal names the slot's config field.

Position encodings also have their declared capabilities (``embeds``, ``rotates_qk``,
``adds_score_bias``, ``linear_bias_slopes``) checked against what their methods do, and a per-head
bias its tensor-parallel split checked against the full bias, on emulated shards (no process group).
"""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

from llm_modules import CausalLM, ConfigError, ModelConfig, Seq2SeqLM
from llm_modules.nn.tensor_parallel import COLWISE, ROWWISE, TensorParallelPlan
from llm_modules.registry import MODEL_REGISTRIES
from llm_modules.training.parallel import tensor_parallel_plans

SLOTS = ("norm", "residual", "activation", "position", "attention")
CASES = [(slot, name) for slot in SLOTS for name in MODEL_REGISTRIES[slot].names()]
IDS = [f"{slot}-{name}" for slot, name in CASES]
VOCAB, D, HEADS, KV_HEADS, HEAD_DIM, FF = 50, 32, 4, 2, 8, 64


def declared(slot: str, name: str, flag: str) -> bool:
    """A capability a registered component declares on its class (True when it declares nothing)."""
    return bool(getattr(MODEL_REGISTRIES[slot].get(name).factory, flag, True))


def config(slot: str, name: str) -> ModelConfig:
    """The tiny model with ``name`` in ``slot``: every size even, so that a tensor-parallel split in
    two is possible for every built-in (d_ff is given: the gated default, round(8d/3), can be odd)."""
    fields = dict(vocab_size=VOCAB, d_model=D, n_layers=2, n_heads=HEADS, n_kv_heads=KV_HEADS, d_ff=FF,
                  max_seq_len=32, attention="eager", dropout=0.0, attention_dropout=0.0)
    return ModelConfig(**{**fields, slot: name})


def kinds(slot: str, name: str) -> list[type]:
    """CausalLM always; an encoder-decoder as well (bidirectional encoder, cross-attention) unless the
    residual layout declares it cannot place cross-attention."""
    if slot == "residual" and not declared(slot, name, "places_cross_attention"):
        return [CausalLM]
    return [CausalLM, Seq2SeqLM]


def build(kind: type, slot: str, name: str, seed: int = 0):
    if not declared(slot, name, "runs_on_cpu"):
        pytest.skip(f"{slot} {name!r} declares runs_on_cpu = False (it needs a GPU or a package; its build "
                    "refuses this machine)")
    torch.manual_seed(seed)
    return kind(config(slot, name)).eval()


def batch(kind: type) -> dict[str, torch.Tensor]:
    ids = torch.randint(2, VOCAB, (2, 12), generator=torch.Generator().manual_seed(1))
    extra = {"decoder_input_ids": ids[:, :7]} if kind is Seq2SeqLM else {}
    return {"input_ids": ids, **extra}


def logits(lm, kind: type) -> torch.Tensor:
    return lm(**batch(kind))


def shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    named = list(module.named_parameters()) + list(module.named_buffers())
    return {name: tuple(t.shape) for name, t in named}


@pytest.mark.parametrize("slot, name", CASES, ids=IDS)
def test_builds_on_meta_with_the_shapes_it_has_on_cpu(slot, name):
    for kind in kinds(slot, name):
        cpu = build(kind, slot, name)
        with torch.device("meta"):
            meta = kind(config(slot, name))
        assert all(t.is_meta for t in meta.parameters())
        assert shapes(meta) == shapes(cpu), kind.__name__


@pytest.mark.parametrize("slot, name", CASES, ids=IDS)
def test_forward_and_backward_on_cpu(slot, name):
    for kind in kinds(slot, name):
        lm = build(kind, slot, name).train()
        if not declared(slot, name, "cpu_backward"):
            with torch.no_grad():
                out = logits(lm, kind)
            assert torch.isfinite(out).all()
            continue  # reported below as a skip, after the forward has been checked
        out = logits(lm, kind)
        assert out.shape[-1] == VOCAB and torch.isfinite(out).all()
        out.float().logsumexp(-1).mean().backward()
        # a component that routes tokens (mixture of experts) declares that a part may see none
        routed = {f"{m}." for m, module in lm.named_modules() if getattr(module, "routes_tokens", False)}
        missing = [n for n, p in lm.named_parameters()
                   if p.requires_grad and p.grad is None and not n.startswith(tuple(routed))]
        assert not missing, f"{kind.__name__}: no gradient reached {missing}"
        assert all(torch.isfinite(p.grad).all() for p in lm.parameters() if p.grad is not None)
    if not declared(slot, name, "cpu_backward"):
        pytest.skip(f"{slot} {name!r} declares cpu_backward = False: forward checked, no backward on CPU")


@pytest.mark.parametrize("slot, name", CASES, ids=IDS)
def test_state_dict_round_trip_gives_the_same_logits(slot, name):
    for kind in kinds(slot, name):
        lm = build(kind, slot, name, seed=0)
        buffer = io.BytesIO()
        torch.save(lm.state_dict(), buffer)
        buffer.seek(0)
        fresh = build(kind, slot, name, seed=1)
        with torch.no_grad():
            assert not torch.equal(logits(fresh, kind), logits(lm, kind))  # other weights: a real test
            fresh.load_state_dict(torch.load(buffer, weights_only=True))
            assert torch.equal(logits(fresh, kind), logits(lm, kind)), kind.__name__


def split_dims(module: nn.Module, plan: TensorParallelPlan) -> list[tuple[str, int]]:
    """Each dimension the plan splits, by child: output features (colwise), input features (rowwise)."""
    dims = []
    for child_name, style in plan.layout.items():
        child = getattr(module, child_name, None)
        assert isinstance(child, (nn.Linear, nn.Embedding)), (
            f"{type(module).__name__}'s plan splits {child_name!r}, which is {type(child).__name__}, not a "
            "direct Linear or Embedding child")
        if isinstance(child, nn.Embedding):
            assert style == COLWISE, f"{child_name}: an embedding splits by columns only"
            dims.append((child_name, child.embedding_dim))
        else:
            dims.append((child_name, child.out_features if style == COLWISE else child.in_features))
    return dims


@pytest.mark.parametrize("slot, name", CASES, ids=IDS)
def test_tensor_parallel_plan_or_declared_refusal(slot, name):
    lm = build(CausalLM, slot, name)
    try:
        plans = tensor_parallel_plans(lm.model)
    except ConfigError as err:
        message = str(err)
        assert message.startswith(f"model.config.{slot}: ") and "tensor_parallel_size" in message, message
        return
    assert plans, "a model always has parts to split (its attention)"
    for where, module, plan in plans:
        dims = split_dims(module, plan)
        assert plan.refusals(2) == [], f"{where}: the tiny model is meant to split in two"
        for size in (2, 3, 4, 5, 8):
            if not plan.refusals(size):  # accepted: every split dimension must then divide
                uneven = [(child, dim) for child, dim in dims if dim % size]
                assert not uneven, f"{where}: {size}-way split accepted, but {uneven} do not divide"
        for part in plan.parts:
            if getattr(module, part, None) is not None:
                assert any(other is getattr(module, part) for _, other, _ in plans), f"{where}.{part} has no plan"


# ---- position encodings: declared capabilities match what the methods do --------------------------------------

POSITION_NAMES = MODEL_REGISTRIES["position"].names()


def encoding(name: str):
    return build(CausalLM, "position", name).model.stack.position


@pytest.mark.parametrize("name", POSITION_NAMES)
def test_position_capabilities_are_what_the_methods_do(name):
    enc = encoding(name)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 6, D, generator=g)
    positions = torch.arange(6).expand(2, 6)
    assert (not torch.equal(enc.embed(x, positions), x)) == enc.embeds, "embeds"
    q, k = torch.randn(2, HEADS, 6, HEAD_DIM, generator=g), torch.randn(2, KV_HEADS, 6, HEAD_DIM, generator=g)
    rq, rk = enc.rotate(q, k, positions, positions)
    assert (not (torch.equal(rq, q) and torch.equal(rk, k))) == enc.rotates_qk, "rotates_qk"
    bias = enc.bias(6, 6)
    assert (bias is not None) == enc.adds_score_bias, "adds_score_bias"
    if bias is not None:
        assert bias.shape[1:] == (HEADS, 6, 6) and bias.shape[0] in (1, 2)
    if enc.linear_bias_slopes:
        assert enc.adds_score_bias and enc.slopes.shape == (HEADS,)
        distance = (torch.arange(6).view(-1, 1) - torch.arange(6).view(1, -1)).abs().float()
        torch.testing.assert_close(bias, -enc.slopes.view(1, -1, 1, 1) * distance)
    assert enc.max_len is None or enc.max_len >= 1


def local_shard(module: nn.Module, plan: TensorParallelPlan, rank: int, size: int) -> nn.Module:
    """What one rank of a ``size``-way group holds after the plan, emulated on a copy (no process group)."""
    shard = copy.deepcopy(module)
    with torch.no_grad():
        for child_name, style in plan.layout.items():
            child = getattr(shard, child_name)
            if isinstance(child, nn.Embedding):
                child.weight = nn.Parameter(child.weight.chunk(size, dim=1)[rank].clone())
            elif style == COLWISE:
                child.weight = nn.Parameter(child.weight.chunk(size, dim=0)[rank].clone())
                if child.bias is not None:
                    child.bias = nn.Parameter(child.bias.chunk(size)[rank].clone())
            else:
                assert style == ROWWISE
                child.weight = nn.Parameter(child.weight.chunk(size, dim=1)[rank].clone())
    if plan.shard_local is not None:
        # the bound method belongs to the original; ask the copy for its own
        shard.tensor_parallel_plan().shard_local(rank, size)
    return shard


@pytest.mark.parametrize("name", POSITION_NAMES)
def test_a_per_head_bias_splits_into_each_ranks_heads(name):
    enc = encoding(name)
    plan = enc.tensor_parallel_plan()
    if not isinstance(plan, TensorParallelPlan):
        assert enc.adds_score_bias, "only a per-head bias has a reason to refuse a split"
        return
    if not enc.adds_score_bias:
        assert not plan.layout and plan.shard_local is None, "nothing per head, nothing to split"
        return
    with torch.no_grad():
        full = enc.bias(5, 7, 2)
        for rank in range(2):
            local = local_shard(enc, plan, rank, 2).bias(5, 7, 2)
            torch.testing.assert_close(local, full.chunk(2, dim=1)[rank])


def test_a_position_that_declares_nothing_is_refused_at_build_naming_what_to_do():
    from llm_modules.registry import POSITIONS

    @POSITIONS.register("test-undeclared")
    class Undeclared(nn.Module):
        """A position plugin that is no PositionEncoding (test only)."""

        def __init__(self):
            super().__init__()

        def embed(self, x, positions):
            return x

    try:
        with pytest.raises(ConfigError, match=r"position 'test-undeclared': Undeclared does not declare embeds, "
                                              r"rotates_qk, .*subclass llm_modules.nn.positions.PositionEncoding"):
            CausalLM(config("position", "test-undeclared"))
    finally:
        POSITIONS.unregister("test-undeclared")
