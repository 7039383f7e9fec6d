"""The quantized number formats, as closed forms: how a float weight becomes integers and scales, and back.

int8, per output channel, symmetric (``int8-weight`` and ``dynamic-int8`` store this):
    scale[n] = max_k |W[n, k]| / 127,   q = round(W / scale) in [-127, 127],   W ~ q * scale
    -127 rather than -128 keeps the range symmetric, so +x and -x quantize alike.

int4, per group of ``group_size`` consecutive inputs of one output channel, asymmetric (``int4-weight``):
    scale = (max - min) / 15,   offset = min,   q = round((W - offset) / scale) in [0, 15],
    W ~ q * scale + offset
    Min/max rather than symmetric: with 16 levels, spending none on an unused sign half matters
    (symmetric int4 loses about a bit on skewed groups). scale and offset are kept as float16
    (as llama.cpp's Q4_1 does): 4.5 bits per weight at group size 64 instead of 5 with float32.
    Two 4-bit values share one byte on disk and in memory: byte = q[2i] | q[2i + 1] << 4. An input
    width that is not a multiple of the group size is padded with zero weights to the next multiple.

Every function here is pure torch on tensors: the tests check the modules against these.
"""

from __future__ import annotations

import torch

INT8_MAX = 127
INT4_LEVELS = 15


def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(q int8 (N, K), scale float32 (N,))`` with ``weight ~ q * scale[:, None]``."""
    w = weight.detach().float()
    scale = w.abs().amax(dim=1) / INT8_MAX
    # An all-zero row has scale 0; divide by 1 there (q = 0), but keep a tiny positive scale so
    # that kernels which divide by it (the dynamic-int8 requantization) stay finite.
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round(w / safe[:, None]).clamp_(-INT8_MAX, INT8_MAX).to(torch.int8)
    return q, scale.clamp(min=torch.finfo(torch.float32).tiny)


def dequantize_int8(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return q.to(dtype) * scale.to(dtype)[:, None]


def padded_width(in_features: int, group_size: int) -> int:
    """The input width rounded up to whole groups."""
    return -(-in_features // group_size) * group_size


def quantize_int4(weight: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(packed uint8 (N, Kp/2), scale float16 (N, Kp/g), offset float16 (N, Kp/g))``, Kp = K padded
    to whole groups, with ``weight ~ q * scale + offset`` group by group."""
    n, k = weight.shape
    kp = padded_width(k, group_size)
    w = torch.nn.functional.pad(weight.detach().float(), (0, kp - k)).view(n, kp // group_size, group_size)
    low, high = w.amin(dim=-1), w.amax(dim=-1)
    # Round scale and offset to float16 first and quantize against the rounded values, so the
    # stored numbers are exactly the ones the rounding was chosen for.
    scale = ((high - low) / INT4_LEVELS).half()
    offset = low.half()
    s = scale.float()
    safe = torch.where(s > 0, s, torch.ones_like(s))
    q = torch.round((w - offset.float()[..., None]) / safe[..., None]).clamp_(0, INT4_LEVELS).to(torch.uint8)
    return pack_int4(q.view(n, kp)), scale, offset


def dequantize_int4(packed: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor, in_features: int | None = None,
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The (N, in_features) weight that ``packed`` / ``scale`` / ``offset`` stand for (``in_features``
    None: the padded width, whole groups)."""
    n, groups = scale.shape
    w = unpack_int4(packed).view(n, groups, -1).to(dtype)
    # In place: one float temporary of the weight's size, not three (a fresh multi-megabyte buffer
    # per operation costs page faults that, at batch 1, take longer than the matmul).
    w.mul_(scale.to(dtype)[..., None]).add_(offset.to(dtype)[..., None])
    w = w.view(n, -1)
    return w if in_features is None else w[:, :in_features]


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """(N, 2M) values in [0, 15] -> (N, M) bytes, the even column in the low nibble."""
    q = q.to(torch.uint8)
    return q[:, 0::2] | (q[:, 1::2] << 4)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """(N, M) bytes -> (N, 2M) values in [0, 15] (inverse of :func:`pack_int4`)."""
    return torch.stack((packed & 0x0F, packed >> 4), dim=-1).view(packed.shape[0], -1)
