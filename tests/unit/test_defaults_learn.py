"""Contract: every component's default init learns, in every combination (norm x residual x LM kind).

The copy task (``benchmarks/copy_task.py``): targets = inputs, tokens drawn uniformly from 16
symbols, fresh each step. A model that ignores its input can do no better than the unigram
entropy ln 16 = 2.77 nats; one that reads its input goes to 0. The bar is half the unigram
entropy: a loss below it needs at least half of each token's information from the input, which
no frequency-only model reaches, whatever the run. Names come from the registry (plugins
included: the example plugin's ``dyt``), so a new norm or layout is covered without editing this
file. Pairwise coverage (every norm with every layout, and each of them with every LM kind)
keeps the file to about 20 short runs.
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import pytest
import torch

from llm_modules.models import KINDS
from llm_modules.nn.init import InitScale, children_first
from llm_modules.registry import NORMS, RESIDUALS

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
try:
    from copy_task import combinations, copy_task, tiny_config
finally:
    sys.path.pop(0)


def pairwise(allowed: list[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
    """Rows of ``allowed`` (norm, residual, kind) covering every pair of values that occurs in it:
    greedy, each row the one that covers the most pairs not yet covered."""
    def pairs(row):
        return set(itertools.combinations(enumerate(row), 2))

    wanted = set().union(*(pairs(row) for row in allowed))
    chosen = []
    while wanted:
        best = max(allowed, key=lambda row: len(pairs(row) & wanted))
        chosen.append(best)
        wanted -= pairs(best)
    return sorted(chosen)


COMBINATIONS = pairwise(list(combinations()))


def test_the_registry_is_covered_plugins_included():
    assert "dyt" in NORMS.names()  # the example plugin's norm: the contract covers plugins too
    seen = {slot: {row[i] for row in COMBINATIONS} for i, slot in enumerate(("norm", "residual", "kind"))}
    assert seen == {"norm": set(NORMS.names()), "residual": set(RESIDUALS.names()), "kind": set(KINDS)}


@pytest.mark.parametrize(("norm", "residual", "kind"), COMBINATIONS)
def test_default_init_learns_the_copy_task(norm, residual, kind):
    with torch.random.fork_rng():
        result = copy_task(norm, residual, kind, steps=40, lr=3e-3)
    bar = result["unigram_entropy"] / 2
    assert result["last"] < bar, (
        f"{norm} + {residual} ({kind}): copy-task loss {result['first']:.2f} -> {result['last']:.2f} after 40 steps, "
        f"not below {bar:.2f} (half the unigram entropy {result['unigram_entropy']:.2f}): its default init drowns "
        "the token signal; give the component a default_init(InitScale) (llm_modules/nn/init.py)"
    )


def test_components_set_their_own_init():
    """The hooks that make sandwich and dyt learn are the components' own, run children first."""
    model = KINDS["CausalLM"](tiny_config("dyt", "sandwich")).model
    init = InitScale(std=0.02, n_layers=2)
    layout = model.stack.layers[0].residual
    gains = [norm.weight for norm in layout.norms_out]
    assert all(torch.allclose(gain, torch.full_like(gain, init.residual_std)) for gain in gains)
    assert all(torch.equal(norm.weight, torch.ones_like(norm.weight)) for norm in layout.norms_in)
    assert model.stack.final_norm.alpha.item() == pytest.approx(0.5 / 0.02)
    order = list(children_first(model))
    assert order.index(layout.norms_out[0]) < order.index(layout) < order.index(model)
