"""Pairwise combinations of LM kind, norm, residual layout, activation and position encoding.

The values of each slot are read from the registry (every built-in, plus a few option variants), so
a new component joins the pairs by being registered. Testing every combination (4 kinds x 4 norms x
5 layouts x 10 activations x 7 positions = 5,600 models when this was written) is too slow; most bugs that come from
combining components come from two of them meeting (a norm that a layout assumes has a bias, a
position encoding that a kind wires wrongly). So the suite covers every *pair* of values at least
once (all-pairs / pairwise testing), asserts that coverage itself, and runs each combination through
the full check: build with eager and with sdpa attention (same weights), forward and backward,
eager == sdpa within 1e-5, and 40 AdamW steps on a tiny repeating pattern must lower the loss.
A residual layout that declares ``places_cross_attention = False`` (``parallel``) with ``Seq2SeqLM`` is
the one invalid pair: it is left out of generation and tested to be refused.
"""

from __future__ import annotations

import itertools
import math
import random

import pytest
import torch
from allpairspy import AllPairs

from _core_helpers import KINDS, POSITIONS, builtin_names, run, tiny_config, training_batch
from llm_modules import ConfigError
from llm_modules.registry import MODEL_REGISTRIES, RESIDUALS

def _slot(slot: str, variants: dict) -> dict:
    """Every built-in component of a slot (read from the registry; an alias such as silu for swish
    once), with ``variants``: option settings worth a value of their own, or a lighter setting under
    a built-in's name."""
    registry, factories, names = MODEL_REGISTRIES[slot], set(), {}
    for name in builtin_names(slot):
        if registry.get(name).factory not in factories:
            factories.add(registry.get(name).factory)
            names[name] = name
    return {**names, **variants}


DIMENSIONS = {
    "activation": _slot("activation", {
        "gelu_tanh": {"name": "gelu", "approximate": "tanh"},
        "moe": {"name": "moe", "expert": "gelu", "n_experts": 4, "top_k": 2},
    }),
    "position": POSITIONS,
    "residual": _slot("residual", {}),
    "kind": {name: name for name in ("CausalLM", "PrefixLM", "Seq2SeqLM", "MaskedLM")},
    "norm": _slot("norm", {"layernorm_nobias": {"name": "layernorm", "bias": False}}),
}
NAMES = list(DIMENSIONS)


def _valid(values: dict[str, str]) -> bool:
    """The invalid pairs: a layout that declares it cannot place cross-attention (parallel) with an
    encoder-decoder."""
    residual = values.get("residual")
    places = residual is None or RESIDUALS.get(residual).factory.places_cross_attention
    return not (values.get("kind") == "Seq2SeqLM" and not places)


def _required_pairs():
    for (a, b) in itertools.combinations(NAMES, 2):
        for va, vb in itertools.product(DIMENSIONS[a], DIMENSIONS[b]):
            if _valid({a: va, b: vb}):
                yield (a, va), (b, vb)


def _pairs_of(combo):
    return {((a, combo[a]), (b, combo[b])) for a, b in itertools.combinations(NAMES, 2)}


def _generate() -> list[dict[str, str]]:
    """allpairspy's rows, topped up for any pair its filtered search left out (it can miss pairs
    next to an excluded one): each missing pair gets a row whose other values are chosen greedily
    to cover as many still-missing pairs as possible."""
    rows = AllPairs(
        [list(DIMENSIONS[n]) for n in NAMES],
        filter_func=lambda row: _valid(dict(zip(NAMES, row))),
    )
    combos = [dict(zip(NAMES, row)) for row in rows]
    covered = set().union(*(_pairs_of(c) for c in combos))
    for pair in _required_pairs():
        if pair in covered:
            continue
        combo = dict(pair)
        for name in NAMES:
            if name in combo:
                continue
            options = [v for v in DIMENSIONS[name] if _valid({**combo, name: v})]
            combo[name] = max(
                options, key=lambda v: len(_pairs_of({**{n: combo.get(n) for n in NAMES}, name: v}) - covered)
            )
        combo = {name: combo[name] for name in NAMES}
        combos.append(combo)
        covered |= _pairs_of(combo)
    return combos


COMBINATIONS = _generate()


def _id(combo):
    return "-".join(combo[n] for n in ("kind", "norm", "residual", "activation", "position"))


def config_of(combo, attention, **extra):
    return tiny_config(
        attention=attention, max_seq_len=16,
        **{slot: DIMENSIONS[slot][combo[slot]] for slot in ("norm", "residual", "activation", "position")},
        **extra,
    )


#: other settings mixed into the sampled combinations below (two at a time)
EXTRA_SETTINGS = [
    {"n_kv_heads": 2}, {"n_kv_heads": 1}, {"bias": False}, {"sliding_window": 5}, {"sparse_stride": 4},
    {"tie_embeddings": False}, {"embedding_norm": True}, {"head_transform": True}, {"lm_head_bias": True},
    {"attention_scale": 0.5}, {"embedding_grad_scale": 0.3}, {"n_encoder_layers": 3}, {"type_vocab_size": 2},
    {"head_dim": 4}, {"d_ff": 40}, {"output_scale": 0.5}, {"n_layers": 1},
]


def _sample_outside(n: int, seed: int) -> list[tuple[dict[str, str], dict]]:
    """Combinations not in the pairwise set, each with two extra settings: any combination, not only
    the tested ones, must pass the same checks (the full random sweep lives outside the suite)."""
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        combo = {name: rng.choice(list(values)) for name, values in DIMENSIONS.items()}
        if _valid(combo) and combo not in COMBINATIONS:
            extra = {}
            for setting in rng.sample(EXTRA_SETTINGS, 2):
                extra.update(setting)
            out.append((combo, extra))
    return out


SAMPLED = _sample_outside(6, seed=2024)


def test_the_set_covers_every_valid_pair_and_no_invalid_one():
    seen = set()
    for combo in COMBINATIONS:
        assert _valid(combo), combo
        for a, b in itertools.combinations(NAMES, 2):
            seen.add(((a, combo[a]), (b, combo[b])))
    missing = [pair for pair in _required_pairs() if pair not in seen]
    assert not missing, f"pairs not covered: {missing[:10]}"
    # a pairwise set is far smaller than the full product, and at least as large as the biggest pair grid
    sizes = sorted(len(values) for values in DIMENSIONS.values())
    assert sizes[-1] * sizes[-2] <= len(COMBINATIONS) < 2 * sizes[-1] * sizes[-2]


def test_the_invalid_pair_is_refused():
    refused = [r for r in DIMENSIONS["residual"] if not _valid({"kind": "Seq2SeqLM", "residual": r})]
    assert refused, "the generation above leaves out a pair that is accepted"
    for residual in refused:
        for norm in DIMENSIONS["norm"].values():
            with pytest.raises(ConfigError, match=rf"residual '{residual}'.*cross-attention"):
                KINDS["Seq2SeqLM"](tiny_config(residual=residual, norm=norm))


def _eval_inputs():
    """A padded batch (one row right-padded) with a prefix per row."""
    ids = torch.randint(2, 50, (2, 12), generator=torch.Generator().manual_seed(11))
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    return ids, mask, torch.tensor([5, 3])


def _train(lm, batch, steps=40, lr=3e-3):
    optimizer = torch.optim.AdamW(lm.parameters(), lr=lr, weight_decay=0.0)
    losses = []
    lm.train()
    for _ in range(steps):
        out = lm.compute_loss(batch)
        optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        optimizer.step()
        losses.append(out["lm_loss"].item())
    with torch.no_grad():
        losses.append(lm.compute_loss(batch)["lm_loss"].item())
    return losses


@pytest.mark.parametrize("combo", COMBINATIONS, ids=[_id(c) for c in COMBINATIONS])
def test_combination(combo):
    check_combination(combo)


@pytest.mark.parametrize(
    "combo, extra", SAMPLED, ids=[_id(c) + "+" + ",".join(f"{k}={v}" for k, v in e.items()) for c, e in SAMPLED]
)
def test_sampled_combination_outside_the_set(combo, extra):
    check_combination(combo, **extra)


def check_combination(combo, steps=40, **extra):
    """Build (eager and sdpa), forward + backward, eager == sdpa, and training lowers the loss."""
    kind = KINDS[combo["kind"]]
    torch.manual_seed(0)
    eager = kind(config_of(combo, "eager", **extra)).eval()
    sdpa = kind(config_of(combo, "sdpa", **extra)).eval()
    sdpa.load_state_dict(eager.state_dict())

    # forward on a padded batch: the two backends agree
    ids, mask, prefix = _eval_inputs()
    with torch.no_grad():
        a = run(eager, ids, mask, prefix_lengths=prefix)
        b = run(sdpa, ids, mask, prefix_lengths=prefix)
    assert a.shape == (2, 12, 50) and torch.isfinite(a).all()
    torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)

    # forward + backward through the LM's own loss: finite, non-zero gradients that agree
    batch = training_batch(combo["kind"])
    grads = []
    for lm in (eager, sdpa):
        lm.zero_grad(set_to_none=True)
        lm.compute_loss(batch)["loss"].backward()
        grads.append({n: p.grad for n, p in lm.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    assert all(torch.isfinite(g).all() for g in grads[0].values())
    assert sum(g.abs().sum().item() for g in grads[0].values()) > 0
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, atol=1e-5, rtol=1e-4, msg=name)

    # a tiny repeating pattern is learnable within 40 steps
    losses = _train(sdpa, batch, steps=steps)
    assert all(math.isfinite(x) for x in losses), f"loss became non-finite: {losses}"
    assert losses[-1] < 0.6 * losses[0], f"loss {losses[0]:.3f} -> {losses[-1]:.3f}"
    return losses
