"""Model FLOPs per token (PaLM's formula) and the peak FLOP/s they are measured against.

Free of Lightning, so ``llm-modules estimate`` (which plans with the same per-token count and GPU
table that ``training.throughput.ThroughputMonitor`` measures MFU with) starts without importing
it. The peak is a vendor datasheet figure for known GPUs (dense, without 2:4 sparsity), chosen by
the training precision, and a measured matmul rate on CPU (no datasheet applies to an arbitrary CPU).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

import torch
from torch import nn

from llm_modules.nn.embedding import LMHead
from llm_modules.nn.linear import linear
from llm_modules.nn.lm import DecoderLM, EncoderDecoderLM


# ---- FLOPs per token --------------------------------------------------------------------------------------


def matmul_parameters(model: nn.Module) -> float:
    """N of PaLM's 6N: the parameters a token's forward multiplies by.

    Embedding lookup tables (token, token-type, learned positions, T5 relative-bias buckets) cost no
    matmul and are left out. The LM head's projection is counted, once, even when it is the token
    table itself (tied): the lookup is free, the (d_model x vocab) matmul that produces logits is not.
    Norm weights and biases are counted as parameters (PaLM's N is all non-embedding parameters).
    In a mixture-of-experts layer a token runs only its top-k of the n experts, so expert
    parameters count at k/n.
    """
    heads = {id(m.proj.weight) for m in model.modules() if isinstance(m, LMHead)}
    lookups = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)} - heads
    share: dict[int, float] = {}
    for m in model.modules():
        routed = getattr(m, "routed_parameters", None)
        if callable(routed):
            for p, fraction in routed():
                share[id(p)] = fraction
    distinct = {id(p): p for p in model.parameters()}
    return sum(p.numel() * share.get(key, 1.0) for key, p in distinct.items() if key not in lookups)


def flops_per_token(config, seq_len: int, decoder_len: int | None = None, model=None) -> float:
    """Training FLOPs per token (forward + backward), PaLM's ``6N + 12·L·H·Q·T``.

    N: ``matmul_parameters``; L: blocks; H: query heads; Q: head dim; T: sequence length. The
    attention term counts every query against every key (T keys per query), as PaLM does, so a
    causal or prefix mask does not halve it; encoder-only and prefix models use the same formula.

    Encoder-decoder (``decoder_len`` given; T_e = ``seq_len``, T_d = ``decoder_len``): a token is an
    encoder or a decoder token, so per example
    ``6·N_enc·T_e + 6·N_dec·T_d + 6·N_xkv·T_e + 12·H·Q·(L_enc·T_e² + L_dec·T_d² + L_dec·T_d·T_e)``
    divided by ``T_e + T_d``, where N_dec includes the head and N_xkv, the cross-attention key and
    value projections, run over the encoder's T_e outputs rather than the decoder's tokens.

    The model is built on the meta device (shapes only), so any config works, at no memory cost,
    and the count does not depend on how training shards the real one. ``model``: that model
    (``DecoderLM``, or ``EncoderDecoderLM`` with ``decoder_len``) already built from ``config``, on
    any device, by a caller that has one (the estimator builds one per config and shares it: a
    mixture-of-experts preset takes seconds to build).
    """
    if model is None:
        with torch.device("meta"):
            model = DecoderLM(config) if decoder_len is None else EncoderDecoderLM(config)
    heads, q = config.n_heads, config.dim_per_head
    if decoder_len is None:
        return 6 * matmul_parameters(model) + 12 * config.n_layers * heads * q * seq_len
    te, td = seq_len, decoder_len
    cross_kv = sum(
        p.numel() for block in model.decoder.layers for proj in (block.cross_attn.k, block.cross_attn.v)
        for p in proj.parameters()
    )
    n_enc = matmul_parameters(model.encoder)
    n_dec = matmul_parameters(model) - n_enc - cross_kv
    attention = 12 * heads * q * (config.encoder_layers * te * te + config.n_layers * (td * td + td * te))
    return (6 * n_enc * te + 6 * n_dec * td + 6 * cross_kv * te + attention) / (te + td)


# ---- peak FLOPs -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Peak:
    """Dense peak TFLOP/s of one GPU by math mode (None: no such tensor-core mode)."""

    name: str
    bf16: float | None
    fp16: float
    tf32: float | None
    fp32: float
    fp8: float | None = None


# Vendor datasheets list tensor-core figures "with sparsity" (2:4 structured); dense is half of
# that, and dense is what training runs. Figures are the datasheet's, in TFLOP/s.
PEAKS: list[tuple[str, Peak]] = [
    # NVIDIA GH200 Grace Hopper Superchip datasheet (its Hopper GPU): FP32 67; TF32 989*, BF16/FP16
    # 1,979*, FP8 3,958* (*sparse); the same GPU figures as H100 SXM.
    (r"gh200", Peak("GH200", 989.4, 989.4, 494.7, 67, 1978.9)),
    # NVIDIA H200 datasheet (H200 NVL column): FP32 60; TF32 835*, BF16/FP16 1,671*, FP8 3,341* (*sparse).
    (r"h200.*nvl", Peak("H200 NVL", 835.5, 835.5, 417.5, 60, 1670.5)),
    # NVIDIA H200 datasheet (H200 SXM column): FP32 67; TF32 989*, BF16/FP16 1,979*, FP8 3,958* (*sparse).
    (r"h200", Peak("H200 SXM", 989.4, 989.4, 494.7, 67, 1978.9)),
    # NVIDIA H100 datasheet (H100 NVL column): FP32 60; TF32 835*, BF16/FP16 1,671*, FP8 3,341* (*sparse).
    (r"h100.*nvl", Peak("H100 NVL", 835.5, 835.5, 417.5, 60, 1670.5)),
    # NVIDIA H100 datasheet (H100 PCIe column): FP32 51; TF32 756*, BF16/FP16 1,513*, FP8 3,026* (*sparse).
    (r"h100.*pcie", Peak("H100 PCIe", 756.5, 756.5, 378, 51, 1513)),
    # NVIDIA H100 datasheet (H100 SXM column): FP32 67; TF32 989*, BF16/FP16 1,979*, FP8 3,958* (*sparse).
    # The SXM part reports itself as e.g. "NVIDIA H100 80GB HBM3".
    (r"h100", Peak("H100 SXM", 989.4, 989.4, 494.7, 67, 1978.9)),
    # NVIDIA A100 datasheet (40GB/80GB, PCIe and SXM alike): FP32 19.5; TF32 156, BF16/FP16 312 (dense).
    (r"a100", Peak("A100", 312, 312, 156, 19.5)),
    # NVIDIA publishes no A10G datasheet (an AWS-only variant of the A10); AWS/NVIDIA's published
    # figures: FP32 35, TF32 35, BF16/FP16 70 (dense). Treat as approximate.
    (r"a10g", Peak("A10G", 70, 70, 35, 35)),
    # NVIDIA A10 datasheet: FP32 31.2; TF32 62.5, BF16/FP16 125 (dense).
    (r"\ba10\b", Peak("A10", 125, 125, 62.5, 31.2)),
    # NVIDIA L40S datasheet: FP32 91.6; TF32 183, BF16/FP16 362.05, FP8 733 (dense).
    (r"l40s", Peak("L40S", 362.05, 362.05, 183, 91.6, 733)),
    # NVIDIA L40 datasheet: FP32 90.5; TF32 90.5, BF16/FP16 181.05, FP8 362 (dense).
    (r"\bl40\b", Peak("L40", 181.05, 181.05, 90.5, 90.5, 362)),
    # NVIDIA L4 datasheet: FP32 30.3; TF32 120*, BF16/FP16 242*, FP8 485* (*sparse).
    (r"\bl4\b", Peak("L4", 121, 121, 60, 30.3, 242.5)),
    # NVIDIA V100 datasheet: Tensor (FP16) 130 / 112 / 125 for V100S PCIe / V100 PCIe / V100 SXM2;
    # FP32 16.4 / 14 / 15.7. Volta has no bf16 or TF32 tensor cores.
    (r"v100s", Peak("V100S PCIe", None, 130, None, 16.4)),
    (r"v100.*pcie", Peak("V100 PCIe", None, 112, None, 14)),
    (r"v100", Peak("V100 SXM2", None, 125, None, 15.7)),
    # NVIDIA Ada (AD102) architecture whitepaper, GeForce RTX 4090: FP16/BF16 tensor with FP32
    # accumulate 165.2 (PyTorch accumulates in FP32); TF32 82.6; FP32 82.6; FP8 (FP32 acc.) 330.3.
    (r"rtx 4090", Peak("RTX 4090", 165.2, 165.2, 82.6, 82.6, 330.3)),
    # AMD Instinct MI300X datasheet: FP16/BF16 1,307.4, TF32 653.7, FP32 163.4, FP8 2,614.9 (dense).
    (r"mi300x", Peak("MI300X", 1307.4, 1307.4, 653.7, 163.4, 2614.9)),
]


def lookup_gpu(device_name: str) -> Peak | None:
    """The table row for a ``torch.cuda.get_device_name()`` string, or None for an unknown GPU."""
    name = device_name.lower()
    for pattern, peak in PEAKS:
        if re.search(pattern, name):
            return peak
    return None


def math_mode(precision: str) -> str:
    """Which datasheet column a Lightning precision flag runs its matmuls in."""
    p = str(precision)
    if p.startswith("transformer-engine"):
        return "fp8"
    if "bf16" in p:
        return "bf16"
    if p.startswith("16"):
        return "fp16"
    if p.startswith("64"):
        return "fp64"
    # 32-true: plain fp32 unless PyTorch is allowed TF32 tensor cores for float32 matmuls.
    return "fp32" if torch.get_float32_matmul_precision() == "highest" else "tf32"


def compute_dtype(precision: str) -> torch.dtype:
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp64": torch.float64}.get(math_mode(precision), torch.float32)


def gpu_peak_flops(device_name: str, precision: str) -> float | None:
    """Datasheet FLOP/s of the GPU at this precision, or None (unknown GPU, or no such mode)."""
    peak = lookup_gpu(device_name)
    if peak is None:
        return None
    value = getattr(peak, math_mode(precision), None)
    return None if value is None else value * 1e12


def measure_matmul_flops(dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                         budget_s: float = 0.25) -> float:
    """FLOP/s of square matmuls in ``dtype`` on ``device`` with the current thread count: the best
    of repeated runs within ``budget_s``. The size doubles until one product takes a few ms, so
    timer resolution and call overhead do not hide the arithmetic rate.

    The product is ``nn.linear.linear``, the kernel behind every linear layer of the model (nearly
    all of its FLOPs; oneDNN's for fp32 on a CPU, faster there than ``torch.mm``'s): on a CPU without native bf16, ``torch.mm`` in bf16 takes a path about 6x slower
    than ``F.linear``'s, and a peak measured that way would put MFU above 100%."""
    n, best = 256, 0.0
    generator = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, generator=generator, device=device).to(dtype)
    b = torch.randn(n, n, generator=generator, device=device).to(dtype)
    linear(a, b)  # the first product of a dtype pays for kernel selection; not timed
    deadline = time.perf_counter() + budget_s
    while True:
        start = time.perf_counter()
        linear(a, b)
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize(device)
        elapsed = max(time.perf_counter() - start, 1e-9)
        best = max(best, 2 * n**3 / elapsed)
        if elapsed < 0.005 and n < 2048:
            n *= 2
            a = torch.randn(n, n, generator=generator, device=device).to(dtype)
            b = torch.randn(n, n, generator=generator, device=device).to(dtype)
            linear(a, b)
            best = 0.0  # a larger size reaches closer to the peak; forget the small one
            continue
        if time.perf_counter() > deadline:
            return best


def peak_flops(device: torch.device, precision: str) -> tuple[float | None, str]:
    """(FLOP/s per device, where the figure comes from) for MFU, or (None, why there is none)."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        value = gpu_peak_flops(name, precision)
        if value is None:
            known = lookup_gpu(name)
            why = (f"{name} has no {math_mode(precision)} tensor-core figure" if known else
                   f"no peak-FLOPs figure for GPU {name!r}")
            return None, why
        return value, f"{lookup_gpu(name).name} datasheet, {math_mode(precision)} dense"
    if device.type == "cpu":
        dtype = compute_dtype(precision)
        return measure_matmul_flops(dtype), f"measured {str(dtype).replace('torch.', '')} matmul on this CPU"
    return None, f"no peak-FLOPs figure for a {device.type} device"
