"""Every fast path of the training step against its reference (issue 11).

Each fast path (hand-written backwards for RMSNorm and rotary embeddings, the chunked cross-entropy,
fused AdamW, sdpa's is_causal path, the cached rotary tables) must give the reference's outputs and
gradients up to float rounding; and a smoke run of ``benchmarks/train_step.py``.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from llm_modules import CausalLM, ModelConfig
from llm_modules.nn import fast
from llm_modules.nn.attention_backends import SDPAttention
from llm_modules.nn.loss import cross_entropy
from llm_modules.nn.masks import AttentionMask
from llm_modules.nn.norms import RMSNorm
from llm_modules.nn.positions import RoPE
from llm_modules.training.optim import OptimConfig, build_optimizer, fused_adamw_fits

ROOT = Path(__file__).resolve().parents[2]


def grads(fn, *tensors):
    """fn's output and the gradients of a fixed random cotangent w.r.t. ``tensors``."""
    out = fn()
    cotangent = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out.dtype)
    return (out, *torch.autograd.grad(out, tensors, cotangent))


#: the modules whose fast paths ask ``plain_tensors``
FAST_PATH_MODULES = ("llm_modules.nn.norms", "llm_modules.nn.positions", "llm_modules.nn.loss", "llm_modules.nn.linear",
                     "llm_modules.nn.blocked_attention")


@pytest.fixture
def no_fast_paths(monkeypatch):
    """Send every module down its reference path (what a tensor subclass gets)."""

    def off(*tensors):
        return False

    for module in FAST_PATH_MODULES:
        monkeypatch.setattr(f"{module}.plain_tensors", off)


# ---- RMSNorm -----------------------------------------------------------------------------------------------


def reference_rmsnorm(x, weight, eps):
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


@pytest.mark.parametrize("weight_trains", [True, False])
def test_rmsnorm_fast_backward_matches_the_reference(weight_trains):
    torch.manual_seed(0)
    norm = RMSNorm(48, eps=1e-5)
    norm.weight.data.uniform_(0.5, 1.5)
    norm.weight.requires_grad_(weight_trains)
    x = torch.randn(3, 7, 48, requires_grad=True) * 3
    inputs = (x, norm.weight) if weight_trains else (x,)
    fast_out = grads(lambda: norm(x), *inputs)
    ref_out = grads(lambda: reference_rmsnorm(x, norm.weight, 1e-5), *inputs)
    assert norm(x).grad_fn.name().startswith("_RMSNormFP32")  # the fast path ran
    for a, b in zip(fast_out, ref_out):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_rmsnorm_fast_path_on_a_strided_input_and_gradient():
    """A transposed input and a non-contiguous gradient (the backward reshapes their product)."""
    torch.manual_seed(1)
    norm = RMSNorm(32, eps=1e-6)
    norm.weight.data.uniform_(0.5, 1.5)
    x = torch.randn(5, 4, 32).transpose(0, 1).requires_grad_()
    upstream = torch.randn(5, 4, 32).transpose(0, 1)
    fast = torch.autograd.grad(norm(x), (x, norm.weight), upstream)
    ref = torch.autograd.grad(reference_rmsnorm(x, norm.weight, 1e-6), (x, norm.weight), upstream)
    torch.testing.assert_close(norm(x), reference_rmsnorm(x, norm.weight, 1e-6), rtol=1e-5, atol=1e-6)
    for a, b in zip(fast, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_rmsnorm_fast_path_keeps_fp32_under_cpu_autocast():
    """bf16-mixed on CPU: the fp32 residual stream is normalized in fp32 (autocast would run the
    dot products in bf16), and a bf16 gradient from the next product comes back as fp32."""
    torch.manual_seed(2)
    norm = RMSNorm(32)
    norm.weight.data.uniform_(0.5, 1.5)
    x = torch.randn(4, 6, 32, requires_grad=True)
    upstream = torch.randn(4, 6, 32).to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = norm(x)
        assert out.dtype == torch.float32 and out.grad_fn.name().startswith("_RMSNormFP32")
        fast = torch.autograd.grad(out, (x, norm.weight), upstream)
    ref_out = reference_rmsnorm(x, norm.weight, norm.eps)
    ref = torch.autograd.grad(ref_out, (x, norm.weight), upstream.float())
    torch.testing.assert_close(out, ref_out, rtol=1e-6, atol=1e-6)
    for a, b in zip(fast, ref):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_rmsnorm_takes_the_reference_path_for_half_precision_and_subclasses(no_fast_paths):
    norm = RMSNorm(16).to(torch.bfloat16)
    x = torch.randn(2, 16, dtype=torch.bfloat16, requires_grad=True)
    assert not norm(x).grad_fn.name().startswith("_RMSNorm")
    torch.testing.assert_close(norm(x), reference_rmsnorm(x, norm.weight, norm.eps))
    norm32 = RMSNorm(16)
    assert not norm32(torch.randn(2, 16, requires_grad=True)).grad_fn.name().startswith("_RMSNorm")  # fixture


# ---- rotary embeddings -------------------------------------------------------------------------------------


def reference_rope(enc: RoPE, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """The rotation as it was written before the fast path: tables per call, rotate_half by cat."""
    angles = positions.float().unsqueeze(-1) * enc.inv_freq
    angles = angles.repeat_interleave(2, dim=-1) if enc.interleaved else torch.cat((angles, angles), dim=-1)
    cos, sin = angles.cos().unsqueeze(1), angles.sin().unsqueeze(1)
    rot, rest = x[..., : enc.rot_dim], x[..., enc.rot_dim :]
    if enc.interleaved:
        pairs = rot.float().unflatten(-1, (-1, 2))
        turned = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
    else:
        first, second = rot.float().chunk(2, dim=-1)
        turned = torch.cat((-second, first), dim=-1)
    rotated = (rot.float() * cos + turned * sin).to(x.dtype)
    return torch.cat((rotated, rest), dim=-1) if rest.shape[-1] else rotated


@pytest.mark.parametrize("interleaved", [False, True], ids=["halves", "interleaved"])
@pytest.mark.parametrize("fraction", [1.0, 0.5])
@pytest.mark.parametrize("padded", [False, True], ids=["expanded", "per-row"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rope_matches_the_reference_rotation(interleaved, fraction, padded, dtype):
    torch.manual_seed(0)
    enc = RoPE(16, theta=500.0, fraction=fraction, interleaved=interleaved)
    # (B, T, H, D) projections viewed as (B, H, T, D), as Attention._heads makes them
    x = torch.randn(3, 11, 4, 16).to(dtype).transpose(1, 2).requires_grad_()
    if padded:
        positions = (torch.tensor([[1] * 11, [0, 0] + [1] * 9, [0] * 5 + [1] * 6]).cumsum(-1) - 1).clamp_min(0)
    else:
        positions = torch.arange(11).unsqueeze(0).expand(3, 11)
    fast_out = grads(lambda: enc.rotate(x, x, positions, positions)[0], x)
    ref_out = grads(lambda: reference_rope(enc, x, positions), x)
    tolerance = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 1.6e-2, "atol": 1e-2}
    for a, b in zip(fast_out, ref_out):
        torch.testing.assert_close(a, b, **tolerance)
    if dtype == torch.float32 and fraction == 1.0:
        assert enc.rotate(x, x, positions, positions)[0].grad_fn.name().startswith("_Rotate")


def test_rope_tables_laid_out_like_the_heads_once_per_head_count():
    """CPU, one row of positions: the rotation multiplies by tables stored in the queries' own
    (B, T, H, D) layout (equal strides), made once per head count and reused by every layer."""
    enc = RoPE(16)
    positions = torch.arange(5).unsqueeze(0).expand(2, 5)
    cos, signed_sin = enc.tables(positions)
    q = torch.randn(2, 5, 4, 16).transpose(1, 2)
    k = torch.randn(2, 5, 2, 16).transpose(1, 2)
    q_cos, _ = enc._laid_out_like(q, cos, signed_sin)
    assert q_cos.shape == (1, 4, 5, 16) and q_cos.transpose(1, 2).is_contiguous()
    torch.testing.assert_close(q_cos, cos.expand(1, 4, 5, 16))
    assert enc._laid_out_like(q, cos, signed_sin)[0] is q_cos  # the next layer: the same tables
    assert enc._laid_out_like(k, cos, signed_sin)[0].shape == (1, 2, 5, 16)  # keys: their own head count
    assert enc._laid_out_like(q.contiguous(), cos, signed_sin)[0].is_contiguous()  # a contiguous (B, H, T, D)
    rotated_q, rotated_k = enc.rotate(q, k, positions, positions)
    torch.testing.assert_close(rotated_q, reference_rope(enc, q, positions))
    torch.testing.assert_close(rotated_k, reference_rope(enc, k, positions))
    assert rotated_q.grad_fn is None or rotated_q.grad_fn.name().startswith("_Rotate")


def test_rope_tables_are_made_once_per_positions_tensor():
    enc = RoPE(8)
    positions = torch.arange(6).unsqueeze(0).expand(2, 6)
    cos, sin = enc.tables(positions)
    assert cos.shape == (1, 1, 6, 8)  # one row for expanded positions, broadcast over the batch
    assert enc.tables(positions)[0] is cos  # every layer, query and key: the same tables
    other = torch.arange(6).unsqueeze(0).expand(2, 6)
    assert enc.tables(other)[0] is not cos  # another tensor: made again
    mutable = torch.arange(6).repeat(2, 1)
    first = enc.tables(mutable)[0]
    mutable += 1  # changed in place: its version moves, the tables are made again
    second = enc.tables(mutable)[0]
    assert second is not first and not torch.equal(first, second)
    enc.inv_freq = enc.inv_freq * 2  # a new inv_freq (e.g. .to()) is not served stale tables
    assert not torch.equal(enc.tables(mutable)[0], second)


def test_rope_fast_path_off_gives_the_same_model_outputs(no_fast_paths):
    enc = RoPE(16)
    x = torch.randn(2, 3, 5, 16)
    positions = torch.arange(5).unsqueeze(0).expand(2, 5)
    torch.testing.assert_close(enc.rotate(x, x, positions, positions)[0], reference_rope(enc, x, positions))


# ---- cross-entropy -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chunked_cross_entropy_matches_f_cross_entropy(dtype, monkeypatch):
    monkeypatch.setattr("llm_modules.nn.loss.CHUNK_ELEMENTS", 1000)  # several chunks of a small vocabulary
    torch.manual_seed(0)
    logits = (torch.randn(3, 17, 301) * 4).to(dtype).requires_grad_()
    targets = torch.randint(0, 301, (3, 17))
    targets[0, :5] = -100
    targets[2, -1] = -100
    ours = grads(lambda: cross_entropy(logits, targets, ignore_index=-100), logits)
    reference = grads(lambda: F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100),
                      logits)
    tolerance = {"rtol": 1e-5, "atol": 1e-7} if dtype == torch.float32 else {"rtol": 1e-2, "atol": 1e-4}
    torch.testing.assert_close(ours[0], reference[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours[1], reference[1], **tolerance)
    assert ours[1].dtype == dtype


def test_fp32_cross_entropy_takes_one_log_softmax_and_keeps_no_logits():
    """fp32 logits: one fused log-softmax over all rows (no chunk loop), whose output the backward
    reads instead of the logits; half precision keeps the chunked path (no fp32 copy)."""
    torch.manual_seed(0)
    logits = (torch.randn(4, 6, 50) * 3).requires_grad_()
    targets = torch.randint(0, 50, (4, 6))
    targets[1, :2] = -100
    loss = cross_entropy(logits, targets, ignore_index=-100)
    assert loss.grad_fn.name() == "_CrossEntropyFP32Backward"
    assert all(saved.data_ptr() != logits.data_ptr() for saved in loss.grad_fn.saved_tensors)
    (scaled := loss * 3.0).backward()  # the incoming gradient scales the result
    reference = torch.autograd.grad(
        3.0 * F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100), logits)[0]
    torch.testing.assert_close(logits.grad, reference, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(scaled, 3.0 * F.cross_entropy(logits.flatten(0, 1), targets.flatten()))
    half = cross_entropy(logits.detach().bfloat16().requires_grad_(), targets)
    assert half.grad_fn.name() == "_CrossEntropyBackward"


def test_fp32_cross_entropy_backward_twice_fails_loudly():
    """The backward writes the gradient over the log-probabilities it kept: a second backward through
    the same graph must fail autograd's version check, never read overwritten values."""
    logits = torch.randn(3, 7, requires_grad=True)
    loss = cross_entropy(logits, torch.tensor([1, 2, 3]))
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_cross_entropy_edge_cases():
    all_ignored = cross_entropy(torch.randn(2, 5, requires_grad=True), torch.full((2,), -100))
    assert math.isnan(float(all_ignored))  # as F.cross_entropy: a mean over no tokens
    transposed = torch.randn(7, 4).t().requires_grad_()  # not contiguous in the vocab: the reference path
    target = torch.tensor([1, 2, 3, 0])
    torch.testing.assert_close(cross_entropy(transposed, target), F.cross_entropy(transposed, target))
    with torch.no_grad():  # evaluation: forward only
        logits = torch.randn(4, 9)
        torch.testing.assert_close(cross_entropy(logits, target), F.cross_entropy(logits, target))


# ---- attention: is_causal --------------------------------------------------------------------------------


def test_sdpa_is_causal_path_equals_the_explicit_causal_mask():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, 9, 8, requires_grad=True) for _ in range(3))
    backend = SDPAttention()
    plain = AttentionMask(9, 9, causal=True)
    assert plain.is_plain_causal
    fused = grads(lambda: backend(q, k, v, plain, None, 0.3), q, k, v)
    explicit = grads(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=plain.dense(q.device), scale=0.3),
                     q, k, v)
    for a, b in zip(fused, explicit):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


# ---- the optimizer -----------------------------------------------------------------------------------------


def test_fused_adamw_is_chosen_where_it_fits_and_matches_the_default_update():
    torch.manual_seed(0)
    params = [torch.randn(5, 4, requires_grad=True), torch.randn(4, requires_grad=True)]
    assert fused_adamw_fits(params)
    assert not fused_adamw_fits([torch.randn(2, requires_grad=True), torch.randn(2, device="meta")])
    assert not fused_adamw_fits([])
    twins = [[p.detach().clone().requires_grad_() for p in params] for _ in range(2)]
    optimizers = [build_optimizer([(f"p{i}.weight", p) for i, p in enumerate(ps)], OptimConfig(fused=fused))
                  for ps, fused in zip(twins, (None, False))]
    assert optimizers[0].param_groups[0]["fused"] and not optimizers[1].param_groups[0].get("fused")
    for step in range(3):
        for ps, optimizer in zip(twins, optimizers):
            for i, p in enumerate(ps):
                p.grad = torch.randn(p.shape, generator=torch.Generator().manual_seed(step * 10 + i))
            optimizer.step()
    for a, b in zip(*twins):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_optim_fused_must_be_a_bool_or_null():
    from llm_modules.registry import ConfigError

    with pytest.raises(ConfigError, match="optim.fused"):
        OptimConfig(fused="yes")


# ---- the whole step ----------------------------------------------------------------------------------------


def loss_and_grads(lm, batch):
    lm.zero_grad(set_to_none=True)
    loss = lm.compute_loss(batch)["loss"]
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in lm.named_parameters()}


@pytest.mark.parametrize("padded", [False, True])
def test_training_step_with_fast_paths_matches_the_reference_paths(monkeypatch, padded):
    cfg = ModelConfig(vocab_size=97, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64, norm="rmsnorm",
                      activation="swiglu", position="rope", attention="sdpa", bias=False, tie_embeddings=False,
                      max_seq_len=16)
    torch.manual_seed(0)
    lm = CausalLM(cfg)
    ids = torch.randint(0, 97, (3, 16), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids}
    if padded:
        batch["attention_mask"] = torch.ones_like(ids).index_fill_(1, torch.tensor([0, 1]), 0)
    monkeypatch.setattr("llm_modules.nn.linear.MIN_MACS", 0)  # every product of this tiny model on oneDNN
    loss, grads_fast = loss_and_grads(lm, batch)
    for module in FAST_PATH_MODULES:
        monkeypatch.setattr(f"{module}.plain_tensors", lambda *tensors: False)
    reference_loss, grads_reference = loss_and_grads(lm, batch)
    torch.testing.assert_close(loss, reference_loss, rtol=1e-5, atol=1e-6)
    for name, grad in grads_fast.items():
        torch.testing.assert_close(grad, grads_reference[name], rtol=1e-4, atol=1e-6, msg=name)


def test_plain_tensors_refuses_subclasses():
    class Sub(torch.Tensor):
        pass

    assert fast.plain_tensors(torch.zeros(1), torch.nn.Parameter(torch.zeros(1)))
    assert not fast.plain_tensors(torch.zeros(1).as_subclass(Sub))


# ---- the benchmark -----------------------------------------------------------------------------------------


def benchmark_module(name: str):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        return __import__(name)
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


def test_train_step_benchmark_smoke(tmp_path, capsys):
    train_step = benchmark_module("train_step")
    out = tmp_path / "step.json"
    # One thread, and the count put back: a worker whose OpenMP pool grew to two threads deadlocks in
    # the DDP processes a later test forks from it (test_stability's ddp_fork).
    threads = torch.get_num_threads()
    try:
        assert train_step.main(["--config", "tiny", "--rounds", "1", "--warmup", "1", "--json", str(out),
                                "--no-retain-memory", "--threads", "1"]) == 0
    finally:
        torch.set_num_threads(threads)
    results = json.loads(out.read_text())
    ours = results["runners"]["ours"]
    assert ours["tokens_per_s"]["best"] > 0 and 0 < ours["share_of_peak"]["best"] < 1.5
    assert results["matmul_flops"]["best"] > 0 and ours["peak_memory_bytes"] > 0
    assert results["flops_per_token"] > 0
    # the whole peak of a step, as the estimator predicts it (the issue asks for within 10%)
    assert ours["peak_memory_bytes"] == pytest.approx(results["estimated_peak_memory_bytes"], rel=0.1)
    try:
        import litgpt  # noqa: F401
    except ImportError:
        assert "litgpt" in results["skipped"]  # said so, and ours is still reported
    else:
        speedup = results["runners"]["litgpt"]["ours_speedup"]
        assert speedup["best"] > 0 and speedup["per_round"] > 0
    assert "ours" in capsys.readouterr().out


def test_the_per_round_ratio_cancels_a_change_of_machine_speed_between_rounds():
    """LitGPT is 1.1x slower in two of three rounds (the second on a machine twice as slow for both);
    its one lucky round decides best against best, not the median of each round's own ratio."""
    train_step = benchmark_module("train_step")
    ours, theirs = [1.0, 2.0, 1.0], [1.1, 2.2, 1.045]
    assert train_step.per_round_speedup(ours, theirs) == pytest.approx(1.1)
    assert min(theirs) / min(ours) == pytest.approx(1.045)
