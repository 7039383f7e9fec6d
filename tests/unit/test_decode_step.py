"""Decoding after the prompt: the lean step (``nn.decode_step``) agrees with the modules, the
session's buffers are allocated once, and a decoding step's mask is built once and only when it
hides something."""

from __future__ import annotations

import pytest
import torch

from llm_modules.generation import generate
from llm_modules.generation.session import open_session
from llm_modules.nn.decode_step import DecodeStep, Projection, packing_available
from llm_modules.nn.masks import AttentionMask

from _core_helpers import build, left_padded

LLAMA = dict(norm="rmsnorm", activation="swiglu", position="rope", attention="sdpa", bias=False)
NEW = 16  # enough steps for the oneDNN reorder (PACK_MIN_STEPS)


def tokens(lm, ids, mask, **options):
    return generate(lm, ids, mask, max_new_tokens=NEW, eos_token_id=[], pad_token_id=0, **options)


@pytest.mark.parametrize("kind, overrides", [
    ("CausalLM", LLAMA),
    ("CausalLM", {**LLAMA, "n_kv_heads": 2, "attention": "eager"}),  # GQA, the reference backend
    ("CausalLM", {"position": "learned", "activation": "gelu", "bias": True}),  # GPT-2's layout: layernorm, MLP
    ("PrefixLM", LLAMA),
])
def test_lean_step_decodes_the_tokens_of_a_full_forward(kind, overrides):
    """Left-padded rows of different lengths: the cached session (lean step) gives the tokens that
    rerunning the whole sequence gives, for greedy decoding and beam search, and logits within
    float rounding of the modules' at every step."""
    lm = build(kind, **overrides)
    assert DecodeStep.why_not(lm.model) is None
    ids, mask = left_padded([7, 3, 5])
    assert torch.equal(tokens(lm, ids, mask), tokens(lm, ids, mask, use_cache=False))
    assert torch.equal(tokens(lm, ids, mask, num_beams=3), tokens(lm, ids, mask, num_beams=3, use_cache=False))
    lean, full = open_session(lm, ids, mask, max_new_tokens=20), open_session(lm, ids, mask, use_cache=False)
    lean.start(), full.start()
    for token in (5, 9, 11, 2):
        step = torch.full((3,), token)
        torch.testing.assert_close(lean.step(step), full.step(step), atol=1e-5, rtol=0)
    assert lean._fast is not None


def test_lean_step_in_bfloat16():
    """Rotation in fp32 and back, as the modules do (no oneDNN reorder outside fp32)."""
    lm = build("CausalLM", **LLAMA).to(torch.bfloat16)
    ids, mask = left_padded([5, 3])
    session = open_session(lm, ids, mask, max_new_tokens=2)
    session.start()
    session.step(torch.tensor([4, 6]))
    assert session._fast is not None and session._fast.layers[0].qkv.packed is None
    assert torch.equal(tokens(lm, ids, mask), tokens(lm, ids, mask, use_cache=False))


def test_seq2seq_cached_tokens_equal_uncached():
    lm = build("Seq2SeqLM", position="t5")
    ids, mask = left_padded([6, 2])
    assert torch.equal(tokens(lm, ids, mask.flip(1)), tokens(lm, ids, mask.flip(1), use_cache=False))


@pytest.mark.parametrize("overrides, reason", [
    ({**LLAMA, "position": "alibi"}, "score bias"),
    ({**LLAMA, "sliding_window": 4}, "sliding"),
    ({**LLAMA, "qk_norm": "head"}, "QK-norm"),
    ({**LLAMA, "activation": {"name": "moe", "n_experts": 3, "top_k": 2}}, "feed-forward"),
])
def test_layouts_without_a_lean_step_keep_the_modules(overrides, reason):
    lm = build("CausalLM", **overrides)
    assert reason in DecodeStep.why_not(lm.model)
    ids, mask = left_padded([5, 2])
    assert torch.equal(tokens(lm, ids, mask), tokens(lm, ids, mask, use_cache=False))


def test_a_subclass_of_a_declared_component_keeps_its_modules():
    """The lean step runs only the math a class declares for itself: a plugin's subclass of GatedMLP that
    computes something else decodes through its own forward, and the tokens follow that forward."""
    from llm_modules.nn.feedforward import GatedMLP

    class DoubledMLP(GatedMLP):
        def forward(self, x):
            return 2 * super().forward(x)

    lm = build("CausalLM", **LLAMA)
    for block in lm.model.stack.layers:
        block.ffn.__class__ = DoubledMLP
    assert "feed-forward DoubledMLP" in DecodeStep.why_not(lm.model)
    ids, mask = left_padded([5, 2])
    assert torch.equal(tokens(lm, ids, mask), tokens(lm, ids, mask, use_cache=False))


@pytest.mark.parametrize("beams", [1, 3])
def test_buffers_are_allocated_once(beams):
    """Every step writes into the same cache and sequence buffers (beam search: after the first
    expansion to beams); nothing is concatenated or reallocated per step."""
    lm = build("CausalLM", **LLAMA)
    ids, mask = left_padded([4, 6])
    session = open_session(lm, ids, mask, max_new_tokens=8)
    session.start()
    if beams > 1:
        session.reorder(torch.arange(2).repeat_interleave(beams))

    def pointers():
        entry = session.cache.layers[0].self_attn
        return (session.ids.untyped_storage().data_ptr(), session.mask.untyped_storage().data_ptr(),
                entry.keys.untyped_storage().data_ptr(), entry.values.untyped_storage().data_ptr())

    before = pointers()
    for step in range(6):
        session.step(torch.full((session.batch_size,), 3 + step))
        if beams > 1:  # keep and duplicate rows, as beam search does every step
            session.reorder(torch.tensor([1, 1, 0, 3, 5, 5]))
        assert pointers() == before
    assert session.ids.shape[1] == 6 + 6


def test_a_decoding_step_without_padding_masks_nothing_and_masks_build_once():
    step = AttentionMask(1, 9, causal=True, q_offset=8)
    assert step.is_empty  # the new token sees every cached key: no mask for the kernels
    assert not AttentionMask(2, 9, causal=True, q_offset=7).is_empty
    assert not AttentionMask(1, 9, causal=True, q_offset=8, window=4).is_empty
    padded = AttentionMask(1, 4, causal=True, q_offset=3, key_padding=torch.tensor([[False, True, True, True]]))
    assert not padded.is_empty
    assert padded.dense() is padded.dense()  # shared by every layer of the step
    assert padded.dense().tolist() == [[[[False, True, True, True]]]]


@pytest.mark.skipif(not packing_available(torch.ones(1)), reason="needs oneDNN on a CPU")
def test_weights_are_reordered_only_for_long_enough_generations():
    lm = build("CausalLM", **LLAMA)
    assert DecodeStep.build(lm.model, rows=2, steps=100).layers[0].qkv.packed is not None
    assert DecodeStep.build(lm.model, rows=2, steps=3).layers[0].qkv.packed is None


@pytest.mark.skipif(not packing_available(torch.ones(1)), reason="needs oneDNN on a CPU")
def test_reordered_projection_computes_the_linears():
    torch.manual_seed(0)
    linears = [torch.nn.Linear(16, n, bias=True) for n in (8, 4, 4)]
    x = torch.randn(3, 1, 16)
    expected = torch.cat([m(x) for m in linears], dim=-1)
    with torch.no_grad():
        torch.testing.assert_close(Projection(linears, rows=3)(x), expected, atol=1e-5, rtol=0)
        torch.testing.assert_close(Projection(linears, rows=None)(x), expected)
