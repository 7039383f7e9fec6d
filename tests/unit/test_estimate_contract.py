"""The estimator's contract with every registered component, generated from the registry.

For every name in every model slot (``registry.MODEL_REGISTRIES``, plugins included), a tiny causal
LM with that component: the estimator's parameter count equals the built model's, and the
activation bytes it traces equal the bytes a real CPU training forward (and loss) keeps for the
backward pass, measured with ``saved_tensors_hooks`` on the real model, each storage once.
Nothing here lists component names: a new component is covered by registering it.
"""

from __future__ import annotations

import pytest
import torch

from llm_modules import ModelConfig
from llm_modules.estimate.activations import estimate_activations
from llm_modules.estimate.params import build_model, count
from llm_modules.nn.lm import count_parameters
from llm_modules.nn.loss import cross_entropy
from llm_modules.registry import MODEL_REGISTRIES, ConfigError, load_plugins

load_plugins()  # at collection: the plugins' names are parameters of the tests below

#: three blocks, so that the estimate's "trace two blocks, count the rest as the second" is exercised
BASE = {"vocab_size": 64, "d_model": 32, "n_layers": 3, "n_heads": 4, "max_seq_len": 32, "norm": "rmsnorm",
        "activation": "swiglu", "position": "rope", "attention": "sdpa", "residual": "pre"}
BATCH, LENGTH = 2, 16
COMPONENTS = [(slot, name) for slot, registry in MODEL_REGISTRIES.items() for name in registry.names()]


def saved_by_a_real_forward(model) -> int:
    """Bytes of the distinct storages autograd keeps in a CPU training forward and loss, parameters excluded."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    ids = torch.randint(0, model.config.vocab_size, (BATCH, LENGTH), generator=torch.Generator().manual_seed(0))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logits = model(ids)
        cross_entropy(logits, torch.zeros(logits.shape[:-1], dtype=torch.long))
    return sum(seen.values())


@pytest.mark.parametrize("slot, name", COMPONENTS, ids=[f"{slot}-{name}" for slot, name in COMPONENTS])
def test_estimate_equals_the_built_model(slot, name):
    cfg = ModelConfig(**{**BASE, slot: name})
    estimate = estimate_activations(cfg, kind="causal", precision="32-true", params_half=False, batch_size=BATCH,
                                    seq_len=LENGTH, device="cpu")
    torch.manual_seed(0)
    try:
        model = build_model(cfg, "causal").train()
        real = saved_by_a_real_forward(model)
    except (ConfigError, RuntimeError) as err:  # a CUDA-only backend: the estimate must say what it did
        assert any(repr(name) in note and "sdpa" in note for note in estimate.notes), (err, estimate.notes)
        assert count(cfg).total == count(cfg.replace(**{slot: "sdpa"})).total  # backends hold no parameters
        return
    assert count(cfg).total == count_parameters(model)
    traced = estimate.blocks + estimate.outside
    if estimate.notes:  # routing assumed even (MoE): N·k routed rows however they fall, so close to real
        assert traced == pytest.approx(real, rel=0.01), estimate.notes
    else:
        assert traced == real
