"""Weight-table pieces for MoE experts (``interop.weights``): the fused ``stacked`` transform, a
``Repeat`` nested per expert, and ``Layouts`` that read either layout and write one."""

from __future__ import annotations

import pytest
import torch

from llm_modules.interop.moe_experts import expert_entries
from llm_modules.interop.weights import Map, Repeat, WeightTable, stacked
from llm_modules.registry import ConfigError

E, F, D = 3, 4, 5


def _ours(layers: int = 2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    shapes = {"gate": (F, D), "up": (F, D), "down": (D, F)}
    return {f"l{i}.experts.{j}.{role}.weight": torch.randn(shape, generator=g)
            for i in range(layers) for j in range(E) for role, shape in shapes.items()}


def _table(layers: int = 2) -> WeightTable:
    layer = (expert_entries("l{i}", "h{i}.per", "h{i}.fused", E, {"gate": "w1", "up": "w3", "down": "w2"}),)
    return WeightTable("test", (Repeat(layers, layer),))


def test_stacked_splits_expert_by_expert_gate_then_up():
    gate_up = torch.arange(E * 2 * F * D, dtype=torch.float32).reshape(E, 2 * F, D)
    parts = stacked(E, parts=2).split(gate_up)
    assert len(parts) == 2 * E
    assert torch.equal(parts[2], gate_up[1, :F]) and torch.equal(parts[3], gate_up[1, F:])  # expert 1: gate, up
    assert torch.equal(stacked(E, parts=2).join(parts), gate_up)


def test_export_writes_one_tensor_per_expert_and_import_reads_it_back():
    ours, table = _ours(), _table()
    hf = table.to_hf(ours)
    assert sorted(hf)[:3] == ["h0.per.0.w1.weight", "h0.per.0.w2.weight", "h0.per.0.w3.weight"]
    assert len(hf) == 2 * E * 3
    assert torch.equal(hf["h1.per.2.w3.weight"], ours["l1.experts.2.up.weight"])
    back = table.from_hf(hf)
    assert back.keys() == ours.keys() and all(torch.equal(back[k], ours[k]) for k in ours)


def test_import_reads_the_fused_layout():
    ours = _ours()
    fused = {}
    for i in range(2):
        fused[f"h{i}.fused.gate_up_proj"] = torch.stack([
            torch.cat([ours[f"l{i}.experts.{j}.gate.weight"], ours[f"l{i}.experts.{j}.up.weight"]]) for j in range(E)])
        fused[f"h{i}.fused.down_proj"] = torch.stack([ours[f"l{i}.experts.{j}.down.weight"] for j in range(E)])
    back = _table().from_hf(fused)
    assert back.keys() == ours.keys() and all(torch.equal(back[k], ours[k]) for k in ours)


def test_a_missing_expert_is_named():
    hf = _table().to_hf(_ours())
    del hf["h1.per.2.w2.weight"]
    with pytest.raises(ConfigError, match=r"'h1\.per\.2\.w2\.weight' is missing"):
        _table().from_hf(hf)


def test_nested_repeat_fills_each_index_in_its_own_names():
    table = WeightTable("test", (Repeat(2, (Repeat(3, (Map("a{i}.{j}", "b{j}.{i}"),), index="j"),)),))
    names = [(m.ours, m.theirs) for m in table.expanded()]
    assert names[:2] == [(("a0.0",), "b0.0"), (("a0.1",), "b1.0")] and names[-1] == (("a1.2",), "b2.1")
