"""Position encodings.

An encoding acts at one or more of three places, and does nothing at the others:
``embed`` adds to the token embeddings (absolute encodings), ``rotate`` turns queries and keys
(RoPE), ``bias`` returns an additive attention bias (ALiBi, T5 relative buckets).
Positions are per example (B, T), counted over real tokens, so left padding does not move them.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from llm_modules.registry import POSITIONS, ConfigError


class PositionEncoding(nn.Module):
    """Base class: an encoding that does nothing anywhere."""

    #: the largest sequence length this encoding can represent (None: unbounded)
    max_len: int | None = None

    def __init__(self):  # explicit, so the registry sees a signature without **kwargs
        super().__init__()

    def embed(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return x

    def rotate(
        self, q: torch.Tensor, k: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return q, k

    def bias(self, q_len: int, k_len: int, q_offset: int = 0) -> torch.Tensor | None:
        return None

    def check_length(self, length: int) -> None:
        if self.max_len is not None and length > self.max_len:
            raise ConfigError(
                f"sequence length {length} is beyond what position {type(self).__name__} allows "
                f"(max_seq_len={self.max_len}); raise max_seq_len or shorten the input"
            )


@POSITIONS.register("none")
class NoPosition(PositionEncoding):
    """No position information (causal masks still leak order implicitly: NoPE)."""


@POSITIONS.register("sinusoidal")
class Sinusoidal(PositionEncoding):
    """Fixed sine/cosine absolute encoding added to the embeddings (Vaswani et al.)."""

    def __init__(self, d_model: int, base: float = 10000.0):
        super().__init__()
        self.d_model, self.base = d_model, base

    def embed(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        half = (self.d_model + 1) // 2
        freqs = self.base ** (-torch.arange(half, device=x.device, dtype=torch.float32) * 2 / self.d_model)
        angles = positions.float().unsqueeze(-1) * freqs
        table = torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(-2)[..., : self.d_model]
        return x + table.to(x.dtype)


@POSITIONS.register("learned")
class LearnedAbsolute(PositionEncoding):
    """A learned embedding per absolute position, added to the token embeddings (GPT-2, BERT)."""

    def __init__(self, d_model: int, max_seq_len: int):
        super().__init__()
        self.max_len = max_seq_len
        self.table = nn.Embedding(max_seq_len, d_model)

    def embed(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        self.check_length(int(positions.max()) + 1 if positions.numel() else 0)
        return x + self.table(positions)


@POSITIONS.register("alibi")
class ALiBi(PositionEncoding):
    """ALiBi (Press et al.): a per-head linear penalty ``-slope * |q - k|`` on attention scores (BLOOM)."""

    def __init__(self, n_heads: int):
        super().__init__()
        self.register_buffer("slopes", alibi_slopes(n_heads), persistent=False)

    def bias(self, q_len: int, k_len: int, q_offset: int = 0) -> torch.Tensor:
        q = torch.arange(q_len, device=self.slopes.device) + q_offset
        k = torch.arange(k_len, device=self.slopes.device)
        distance = (q.view(-1, 1) - k.view(1, -1)).abs().float()
        return (-self.slopes.view(1, -1, 1, 1) * distance).to(torch.float32)


def alibi_slopes(n_heads: int) -> torch.Tensor:
    """Geometric slopes 2^(-8i/n); for a head count that is not a power of two, the slopes of the
    next lower power of two followed by every other slope of twice that power (the paper's rule)."""

    def geometric(n: int) -> list[float]:
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    lower = 2 ** math.floor(math.log2(n_heads))
    slopes = geometric(lower)
    if lower != n_heads:
        slopes += geometric(2 * lower)[0::2][: n_heads - lower]
    return torch.tensor(slopes, dtype=torch.float32)


@POSITIONS.register("t5")
class T5RelativeBias(PositionEncoding):
    """T5 relative position buckets: a learned per-head bias for each log-spaced distance bucket.

    Bidirectional in encoders and prefix decoders (separate buckets for left and right),
    unidirectional in causal decoders. One table per stack, shared by all its layers.
    """

    def __init__(self, n_heads: int, bidirectional: bool, num_buckets: int = 32, max_distance: int = 128):
        super().__init__()
        self.bidirectional, self.num_buckets, self.max_distance = bidirectional, num_buckets, max_distance
        self.table = nn.Embedding(num_buckets, n_heads)

    def bias(self, q_len: int, k_len: int, q_offset: int = 0) -> torch.Tensor:
        device = self.table.weight.device
        q = torch.arange(q_len, device=device) + q_offset
        k = torch.arange(k_len, device=device)
        buckets = relative_bucket(k.view(1, -1) - q.view(-1, 1), self.bidirectional, self.num_buckets, self.max_distance)
        return self.table(buckets).permute(2, 0, 1).unsqueeze(0).float()


def relative_bucket(relative: torch.Tensor, bidirectional: bool, num_buckets: int, max_distance: int) -> torch.Tensor:
    """Map key-minus-query distances to buckets: exact for small distances, log-spaced up to max_distance."""
    bucket = torch.zeros_like(relative)
    if bidirectional:
        num_buckets //= 2
        bucket = bucket + (relative > 0).long() * num_buckets
        distance = relative.abs()
    else:
        distance = (-relative).clamp_min(0)
    exact = num_buckets // 2
    log_ratio = torch.log(distance.float().clamp_min(1) / exact) / math.log(max_distance / exact)
    far = exact + (log_ratio * (num_buckets - exact)).long()
    far = far.clamp_max(num_buckets - 1)
    return bucket + torch.where(distance < exact, distance, far)


@POSITIONS.register("rope")
class RoPE(PositionEncoding):
    """Rotary embeddings (Su et al.): rotate query/key feature pairs by position-dependent angles.

    ``fraction`` rotates only the first part of each head (GPT-NeoX/GPT-J partial rotary);
    ``interleaved`` pairs adjacent features (GPT-J, original paper) instead of the two halves (LLaMA).
    """

    def __init__(self, head_dim: int, theta: float = 10000.0, fraction: float = 1.0, interleaved: bool = False):
        super().__init__()
        rot = int(head_dim * fraction)
        if not 0.0 < fraction <= 1.0 or rot <= 0 or rot % 2:
            raise ConfigError(
                f"position rope: fraction must be in (0, 1] and rotary dims = head_dim*fraction = "
                f"{head_dim}*{fraction} a positive even number; change fraction or head_dim"
            )
        self.rot_dim, self.interleaved, self.theta = rot, interleaved, theta
        inv_freq = 1.0 / (theta ** (torch.arange(0, rot, 2, dtype=torch.float32) / rot))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def rotate(self, q, k, q_pos, k_pos):
        return self._rotate_one(q, q_pos), self._rotate_one(k, k_pos)

    def _rotate_one(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        # x: (B, H, T, D); positions: (B, T)
        angles = positions.float().unsqueeze(-1) * self.inv_freq  # (B, T, rot/2)
        if self.interleaved:
            angles = angles.repeat_interleave(2, dim=-1)
        else:
            angles = torch.cat((angles, angles), dim=-1)
        cos, sin = angles.cos().unsqueeze(1), angles.sin().unsqueeze(1)
        rot, rest = x[..., : self.rot_dim], x[..., self.rot_dim :]
        if self.interleaved:
            pairs = rot.float().unflatten(-1, (-1, 2))
            turned = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
        else:
            first, second = rot.float().chunk(2, dim=-1)
            turned = torch.cat((-second, first), dim=-1)
        rotated = (rot.float() * cos + turned * sin).to(x.dtype)
        return torch.cat((rotated, rest), dim=-1) if rest.shape[-1] else rotated
