"""Incremental decoding with a KV cache gives, at every step, the logits of a full forward pass
over the whole sequence: for each generating LM kind, position encoding and attention backend,
with left-padded batches, and after beam-style row reordering."""

from __future__ import annotations

import pytest
import torch

from llm_modules import ConfigError
from llm_modules.generation.session import open_session
from llm_modules.nn.kv_cache import CacheEntry

from _core_helpers import POSITIONS, VOCAB, build, left_padded

GENERATING = ("CausalLM", "PrefixLM", "Seq2SeqLM")
STEPS = 6


def max_step_difference(lm, ids, mask, steps=STEPS, reorder=None):
    """Feed the same tokens to a cached and an uncached session; the largest logit difference."""
    cached, plain = open_session(lm, ids, mask), open_session(lm, ids, mask, use_cache=False)
    worst = (cached.start() - plain.start()).abs().max().item()
    generator = torch.Generator().manual_seed(1)
    for step in range(steps):
        if reorder is not None and step == reorder[0]:
            cached.reorder(reorder[1])
            plain.reorder(reorder[1])
        tokens = torch.randint(2, VOCAB, (cached.batch_size,), generator=generator)
        worst = max(worst, (cached.step(tokens) - plain.step(tokens)).abs().max().item())
    return worst


@pytest.mark.parametrize("position", list(POSITIONS))
@pytest.mark.parametrize("kind", GENERATING)
def test_cached_equals_uncached_for_every_position_encoding(kind, position):
    lm = build(kind, position=POSITIONS[position])
    ids, mask = left_padded([7, 4, 5])
    assert max_step_difference(lm, ids, mask) < 1e-4


@pytest.mark.parametrize("attention", ["eager", "sdpa", "flex"])
@pytest.mark.parametrize("kind", GENERATING)
def test_cached_equals_uncached_for_every_backend(kind, attention):
    lm = build(kind, attention=attention, position="rope" if kind != "Seq2SeqLM" else "t5")
    ids, mask = left_padded([6, 3])
    assert max_step_difference(lm, ids, mask, steps=3) < 1e-4


@pytest.mark.parametrize(
    "overrides",
    [
        {"n_kv_heads": 1},  # multi-query: one cached key/value head
        {"sliding_window": 4, "position": "alibi"},  # the window slides past cached keys
        {"sparse_stride": 3},
        {"residual": "parallel", "position": "rope"},
        {"residual": "post", "position": "sinusoidal"},
    ],
    ids=["mqa", "window", "stride", "parallel", "post"],
)
def test_cached_equals_uncached_for_structured_attention(overrides):
    lm = build("CausalLM", **overrides)
    ids, mask = left_padded([5, 8])
    assert max_step_difference(lm, ids, mask, steps=5) < 1e-4


@pytest.mark.parametrize("kind", GENERATING)
def test_reorder_keeps_rows_consistent(kind):
    """Beam search duplicates and drops rows mid-way; the cache must follow."""
    lm = build(kind, position="rope" if kind != "Seq2SeqLM" else "t5")
    ids, mask = left_padded([4, 6])
    index = torch.tensor([1, 1, 0])
    assert max_step_difference(lm, ids, mask, reorder=(2, index)) < 1e-4


def test_unpadded_prompts_match_the_full_forward_logits():
    lm = build("CausalLM", position="rope", attention="sdpa")
    ids = torch.randint(2, VOCAB, (2, 5), generator=torch.Generator().manual_seed(3))
    session = open_session(lm, ids, max_new_tokens=2)
    first = session.start()
    nxt = torch.tensor([7, 9])
    second = session.step(nxt)
    with torch.no_grad():
        full = lm(torch.cat((ids, nxt.view(-1, 1)), 1))
    torch.testing.assert_close(first, full[:, -2], atol=1e-5, rtol=0)
    torch.testing.assert_close(second, full[:, -1], atol=1e-5, rtol=0)


def test_prefix_decoder_treats_the_real_prompt_as_prefix():
    """Left padding is not part of the prefix: the first new token's logits equal those of an
    unpadded row with prefix_lengths = its real length."""
    lm = build("PrefixLM", position="t5")
    ids, mask = left_padded([3, 6])
    session = open_session(lm, ids, mask)
    logits = session.start()
    alone = ids[:1, -3:]
    with torch.no_grad():
        expected = lm(alone, prefix_lengths=torch.tensor([3]))[:, -1]
    torch.testing.assert_close(logits[:1], expected, atol=1e-5, rtol=0)


def test_cache_buffer_grows_without_losing_keys():
    entry = CacheEntry(capacity=2)
    chunks = [torch.randn(1, 2, n, 4) for n in (1, 3, 1, 5)]
    for chunk in chunks:
        keys, values = entry.append(chunk, -chunk)
    torch.testing.assert_close(keys, torch.cat(chunks, 2))
    torch.testing.assert_close(values, -torch.cat(chunks, 2))


def test_sessions_refuse_what_they_cannot_decode():
    with pytest.raises(ConfigError, match="fill_mask"):
        open_session(build("MaskedLM"), torch.ones(1, 3, dtype=torch.long))
    ids, mask = left_padded([2, 4])
    with pytest.raises(ValueError, match="left-padded"):
        open_session(build("CausalLM"), ids, mask.flip(1))
    with pytest.raises(ConfigError, match="prefix decoders"):
        open_session(build("CausalLM"), ids, mask, prefix_lengths=torch.tensor([1, 1]))
