"""``nn.blocked_attention``: causal fp32 attention on a CPU, one block of queries at a time.

Its outputs and gradients, with as many key/value heads as query heads or fewer (grouped-query
attention), are compared with the closed form in float64; the ``sdpa`` backend is
checked to send plain causal self-attention there and everything else to torch's kernel; and the
memory estimator counts what it keeps on a CPU and not on a GPU.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

from llm_modules import ModelConfig
from llm_modules.estimate.activations import estimate_activations
from llm_modules.nn import blocked_attention
from llm_modules.nn.attention_backends import SDPAttention
from llm_modules.nn.masks import AttentionMask


def reference(q, k, v, scale):
    """softmax(scale q k^T, causal) v in float64; fewer key/value heads are repeated for their group
    of query heads (query head h reads key/value head h // group, as torch's ``enable_gqa``)."""
    group = q.shape[1] // k.shape[1]
    q, k, v = q.double(), k.double().repeat_interleave(group, 1), v.double().repeat_interleave(group, 1)
    scores = q @ k.transpose(-1, -2) * scale
    length = q.shape[-2]
    hidden = torch.ones(length, length, dtype=torch.bool).triu(1)
    return scores.masked_fill(hidden, -math.inf).softmax(-1) @ v


def inputs(batch, heads, length, dim, value_dim=None, strided=False, seed=0, kv_heads=None):
    """q (B, H, T, D), k and v (B, H_kv, T, D) needing gradients; ``strided``: views of (B, T, H, D)
    tensors, as the attention module's projections give them."""
    gen = torch.Generator().manual_seed(seed)

    def one(h, d):
        if strided:
            return torch.randn(batch, length, h, d, generator=gen).transpose(1, 2).requires_grad_()
        return torch.randn(batch, h, length, d, generator=gen).requires_grad_()

    kv_heads = kv_heads or heads
    return one(heads, dim), one(kv_heads, dim), one(kv_heads, value_dim or dim)


@pytest.mark.parametrize("length", [1, 5, 63, 64, 65, 130, 512])
@pytest.mark.parametrize("strided", [False, True])
@pytest.mark.parametrize("heads, kv_heads", [(3, 3), (6, 2), (4, 1)])
def test_outputs_and_gradients_equal_the_closed_form(length, strided, heads, kv_heads):
    q, k, v = inputs(2, heads, length, 16, strided=strided, kv_heads=kv_heads)
    assert blocked_attention.serves(q, k, v) == (blocked_attention.MIN_LEN <= length <= blocked_attention.MAX_LEN)
    cotangent = torch.randn(2, heads, length, 16, generator=torch.Generator().manual_seed(1))
    out = blocked_attention.causal_attention(q, k, v, 0.3)
    grads = torch.autograd.grad(out, (q, k, v), cotangent)
    expected = reference(q, k, v, 0.3)
    expected_grads = torch.autograd.grad(expected, (q, k, v), cotangent.double())
    assert out.grad_fn.name() == "_BlockedCausalBackward"
    torch.testing.assert_close(out, expected.float(), rtol=1e-5, atol=1e-5)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want.float(), rtol=1e-4, atol=1e-5)


def test_values_of_another_width():
    q, k, v = inputs(1, 2, 150, 8, value_dim=12)
    assert blocked_attention.serves(q, k, v)
    out = blocked_attention.causal_attention(q, k, v, 0.5)
    assert out.shape == (1, 2, 150, 12)
    torch.testing.assert_close(out, reference(q, k, v, 0.5).float(), rtol=1e-5, atol=1e-5)
    grads = torch.autograd.grad(out.sum(), (q, k, v))
    expected = torch.autograd.grad(reference(q, k, v, 0.5).sum(), (q, k, v))
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want.float(), rtol=1e-4, atol=1e-5)


def test_it_takes_training_steps_within_its_lengths_only():
    q, k, v = inputs(1, 4, 200, 8)
    assert blocked_attention.serves(q, k, v)
    with torch.no_grad():
        assert not blocked_attention.serves(q, k, v), "a forward alone keeps the fused kernel"
    assert not blocked_attention.serves(q.detach(), k.detach(), v.detach())
    short = inputs(1, 4, blocked_attention.MIN_LEN - 1, 8)
    assert not blocked_attention.serves(*short), "below MIN_LEN the fused kernel is as fast"
    assert blocked_attention.serves(q, k[:, :2], v[:, :2]), "two query heads per key/value head"
    assert not blocked_attention.serves(q, k[:, :3], v[:, :3]), "4 query heads cannot share 3 key/value heads"
    assert not blocked_attention.serves(q, k[:, :, :150], v[:, :, :150]), "keys of another length"
    assert not blocked_attention.serves(q[:1], k[:1].expand(2, -1, -1, -1), v[:1].expand(2, -1, -1, -1))
    empty = inputs(0, 4, 200, 8, kv_heads=2)
    assert not blocked_attention.serves(*empty), "an empty batch goes to torch's kernel"
    causal = AttentionMask(q_len=200, k_len=200, causal=True)
    out = SDPAttention()(*empty, causal, None, 0.25)
    assert out.shape == (0, 4, 200, 8) and torch.autograd.grad(out.sum(), empty)[0].shape == (0, 4, 200, 8)
    assert not blocked_attention.serves(q.half(), k.half(), v.half())
    assert not blocked_attention.serves(q.double(), k.double(), v.double())
    long = inputs(1, 1, blocked_attention.MAX_LEN + 1, 8)
    assert not blocked_attention.serves(*long), "past MAX_LEN the fused kernel keeps less"
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not blocked_attention.serves(q, k, v)
    with blocked_attention.disabled():
        assert not blocked_attention.serves(q, k, v)
    assert blocked_attention.serves(q, k, v), "disabled() restores"

    class Sub(torch.Tensor):
        pass

    assert not blocked_attention.serves(q.detach().as_subclass(Sub), k, v)


def backend_grad_fn(q, k, v, mask, bias=None, dropout=0.0):
    out = SDPAttention()(q, k, v, mask, bias, 0.25, dropout)
    return out.grad_fn.name()


def test_the_sdpa_backend_takes_it_for_plain_causal_self_attention_only():
    q, k, v = inputs(2, 4, 140, 8, strided=True)
    causal = AttentionMask(q_len=140, k_len=140, causal=True)
    assert backend_grad_fn(q, k, v, causal) == "_BlockedCausalBackward"
    assert backend_grad_fn(q, k, v, causal, dropout=0.1) != "_BlockedCausalBackward"
    assert backend_grad_fn(q, k, v, causal, bias=torch.zeros(1, 4, 140, 140)) != "_BlockedCausalBackward"
    padded = AttentionMask(q_len=140, k_len=140, causal=True, key_padding=torch.ones(2, 140, dtype=torch.bool))
    assert backend_grad_fn(q, k, v, padded) != "_BlockedCausalBackward"
    assert backend_grad_fn(q, k, v, AttentionMask(q_len=140, k_len=140, causal=False)) != "_BlockedCausalBackward"
    assert backend_grad_fn(q, k[:, :2], v[:, :2], causal) == "_BlockedCausalBackward"
    # and what it computes is what torch's kernel computes, with grouped keys and values too
    for keys, values in ((k, v), (k[:, :2], v[:, :2]), (k[:, :1], v[:, :1])):
        with blocked_attention.disabled():
            fused = SDPAttention()(q, keys, values, causal, None, 0.25)
        torch.testing.assert_close(SDPAttention()(q, keys, values, causal, None, 0.25), fused, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kv_heads", [4, 2])
def test_the_estimator_counts_its_probabilities_on_a_cpu_and_not_on_a_gpu(kv_heads):
    cfg = ModelConfig(vocab_size=97, d_model=32, n_layers=2, n_heads=4, n_kv_heads=kv_heads, norm="rmsnorm",
                      activation="swiglu", position="rope", attention="sdpa", bias=False, max_seq_len=160)
    batch, length = 3, 160
    common = dict(kind="causal", precision="32-true", params_half=False, batch_size=batch, seq_len=length)
    cpu = estimate_activations(cfg, device="cpu", **common)
    gpu = estimate_activations(cfg, device="cuda", **common)
    # each block of 64 query rows keeps its rows x (keys up to its last row) probabilities, in fp32, for
    # every query head (grouped or not), where the fused kernel keeps one fp32 log-sum-exp per query row
    kept = sum((end - start) * end for start, end in ((0, 64), (64, 128), (128, 160))) - length
    assert cpu.blocks - gpu.blocks == 4 * batch * cfg.n_heads * kept * cfg.n_layers


def test_the_benchmark_times_both_kernels(tmp_path):
    root = str(Path(__file__).resolve().parents[2] / "benchmarks")
    sys.path.insert(0, root)
    try:
        import attention_cpu
    finally:
        sys.path.remove(root)
    # one thread, and the count put back: a later test forks DDP processes from this worker (see
    # test_fast_paths.test_train_step_benchmark_smoke)
    threads = torch.get_num_threads()
    try:
        rows = attention_cpu.main(["--shape", "1x2x130x8", "1x1x600x4", "1x4x130x8/2", "--rounds", "1",
                                   "--threads", "1", "--json", str(tmp_path / "a.json")])
    finally:
        torch.set_num_threads(threads)
    assert [row["served"] for row in rows] == [True, False, True]
    assert all(row["step_ms"]["ours"] > 0 and row["step_ms"]["torch"] > 0 for row in rows)
    assert json.loads((tmp_path / "a.json").read_text())["rows"][0]["shape"] == "1x2x130x8"
