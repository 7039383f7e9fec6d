"""What the estimator computes once per model and reuses (the meta-device model, a pipeline's
splits) is recomputed when the model would differ: a config changed in place, or a component name
that builds something else now."""

from __future__ import annotations

import torch
from torch import nn

from llm_modules.config import ModelConfig
from llm_modules.estimate.params import count
from llm_modules.estimate.pipeline import stage_blocks
from llm_modules.registry import NORMS

TINY = dict(vocab_size=256, d_model=32, n_layers=4, n_heads=4, max_seq_len=32, position="rope",
            tie_embeddings=False, dropout=0.0, norm="test-reuse-norm")


class _Gain(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * self.weight


class _GainAndBias(_Gain):
    def __init__(self, dim: int):
        super().__init__(dim)
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x):
        return x * self.weight + self.bias


def test_a_config_changed_in_place_is_counted_again():
    NORMS.register("test-reuse-norm")(_Gain)
    try:
        config = ModelConfig(**TINY)
        before = count(config)
        config.n_layers = 6
        after = count(config)
        assert after.n_blocks == 6 and after.total == before.total + 2 * before.block
        assert len(sum(stage_blocks(config, "causal", 2), [])) == 6
    finally:
        NORMS.unregister("test-reuse-norm")


def test_a_name_that_builds_another_component_is_counted_again():
    NORMS.register("test-reuse-norm")(_Gain)
    try:
        config = ModelConfig(**TINY)
        plain = count(config)
    finally:
        NORMS.unregister("test-reuse-norm")
    NORMS.register("test-reuse-norm")(_GainAndBias)
    try:
        biased = count(config)
    finally:
        NORMS.unregister("test-reuse-norm")
    norms = 2 * plain.n_blocks + 1  # two per block and the final one
    assert biased.total == plain.total + norms * TINY["d_model"]
