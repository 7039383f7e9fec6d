"""Position encodings.

An encoding acts at one or more of three places, and does nothing at the others:
``embed`` adds to the token embeddings (absolute encodings), ``rotate`` turns queries and keys
(RoPE), ``bias`` returns an additive attention bias (ALiBi, T5 relative buckets).
Positions are per example (B, T), counted over real tokens, so left padding does not move them.

Each encoding *declares* where it acts (``embeds``, ``rotates_qk``, ``adds_score_bias``,
``linear_bias_slopes``) and how it splits over tensor-parallel ranks (``tensor_parallel_plan``), so
that attention backends and the trainer ask the declaration instead of probing calls or types.
"""

from __future__ import annotations

import math
import weakref

import torch
from torch import nn

from llm_modules.nn.fast import plain_tensors
from llm_modules.nn.rope_scaling import check_scaling, dynamic_frequencies, frequencies, longrope_frequencies
from llm_modules.nn.tensor_parallel import COLWISE, Divisible, TensorParallelPlan, TensorParallelRefusal
from llm_modules.registry import POSITIONS, ConfigError


class PositionEncoding(nn.Module):
    """Base class: an encoding that does nothing anywhere.

    The contract (what the rest of the system reads, and nothing else):

    - ``embeds``: ``embed`` adds to the token embeddings (absolute encodings);
    - ``rotates_qk``: ``rotate`` turns queries and keys (RoPE);
    - ``adds_score_bias``: ``bias`` returns an additive score bias (B or 1, H, Tq, Tk); backends
      that cannot add one refuse such an encoding at model build;
    - ``linear_bias_slopes``: that bias is exactly ``-slopes[h] * |q - k|`` with the per-head buffer
      ``slopes`` (H,), which fused kernels (flash-attn) take instead of the dense tensor;
    - ``max_len``: the longest sequence it can represent (None: unbounded);
    - ``tensor_parallel_plan()``: how its per-head state splits over tensor-parallel ranks. By
      default nothing per-head (replicated); an encoding that adds a score bias is refused unless it
      says how its heads split, since a rank sees only its own heads.

    Each flag must agree with the methods (the contract tests check every registered encoding):
    an encoding that overrides ``bias`` sets ``adds_score_bias``, and so on.
    """

    #: the largest sequence length this encoding can represent (None: unbounded)
    max_len: int | None = None
    #: ``embed`` adds to the token embeddings
    embeds: bool = False
    #: ``rotate`` turns queries and keys
    rotates_qk: bool = False
    #: ``bias`` returns an additive attention-score bias
    adds_score_bias: bool = False
    #: the bias is ``-slopes * |q - k|`` from a per-head buffer ``slopes`` (ALiBi's form)
    linear_bias_slopes: bool = False
    #: keys cached while a sequence was at most this long are stale once it grows past it
    #: (longrope switching to its long factors): generation recomputes its cache then, once
    cache_stale_after: int | None = None

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

    def tensor_parallel_plan(self) -> TensorParallelPlan | TensorParallelRefusal:
        """Nothing per head: replicated. An encoding with a per-head score bias overrides this."""
        if self.adds_score_bias:
            return TensorParallelRefusal(
                "adds a per-head score bias and declares no tensor-parallel split of its heads",
                "use position rope, alibi or t5, or data parallelism alone (tensor_parallel_size: 1)",
            )
        return TensorParallelPlan()

    def for_sliding_layers(self) -> "PositionEncoding":
        """The encoding that layers attending through a sliding window use (``layer_types``); the
        same one by default. RoPE with ``local_theta`` gives such layers their own base (Gemma 3)."""
        return self

    def check_length(self, length: int) -> None:
        if self.max_len is not None and length > self.max_len:
            raise ConfigError(
                f"sequence length {length} is beyond what position {type(self).__name__} allows "
                f"(max_seq_len={self.max_len}); raise max_seq_len or shorten the input"
            )


#: what every position encoding declares (``PositionEncoding`` gives the defaults)
DECLARATIONS = ("embeds", "rotates_qk", "adds_score_bias", "linear_bias_slopes", "max_len", "tensor_parallel_plan")


def check_declarations(encoding: object, name: str) -> None:
    """Refuse, at model build, a registered encoding that does not declare the contract (a plugin class
    that is not a ``PositionEncoding``): backends and the trainer read those declarations."""
    missing = [attr for attr in DECLARATIONS if not hasattr(encoding, attr)]
    if missing:
        raise ConfigError(
            f"position {name!r}: {type(encoding).__name__} does not declare {', '.join(missing)}; subclass "
            "llm_modules.nn.positions.PositionEncoding (its defaults declare an encoding that acts nowhere) "
            "and set what yours does"
        )


@POSITIONS.register("none")
class NoPosition(PositionEncoding):
    """No position information (causal masks still leak order implicitly: NoPE)."""


@POSITIONS.register("sinusoidal")
class Sinusoidal(PositionEncoding):
    """Fixed sine/cosine absolute encoding added to the embeddings (Vaswani et al.)."""

    embeds = True

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
    """A learned embedding per absolute position, added to the token embeddings (GPT-2, BERT).

    ``offset``: position p reads row p + offset of a table of max_seq_len + offset rows (OPT
    stores its table with 2 leading rows that no position reads).
    """

    embeds = True

    def __init__(self, d_model: int, max_seq_len: int, offset: int = 0):
        super().__init__()
        if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
            raise ConfigError(f"position learned: offset must be a non-negative integer (rows before position 0); "
                              f"got {offset!r}")
        self.max_len, self.offset = max_seq_len, offset
        self.table = nn.Embedding(max_seq_len + offset, d_model)

    def embed(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        self.check_length(int(positions.max()) + 1 if positions.numel() else 0)
        return x + self.table(positions + self.offset if self.offset else positions)


@POSITIONS.register("alibi")
class ALiBi(PositionEncoding):
    """ALiBi (Press et al.): a per-head linear penalty ``-slope * |q - k|`` on attention scores (BLOOM)."""

    adds_score_bias = True
    linear_bias_slopes = True

    def __init__(self, n_heads: int):
        super().__init__()
        self.register_buffer("slopes", alibi_slopes(n_heads), persistent=False)

    def bias(self, q_len: int, k_len: int, q_offset: int = 0) -> torch.Tensor:
        q = torch.arange(q_len, device=self.slopes.device) + q_offset
        k = torch.arange(k_len, device=self.slopes.device)
        distance = (q.view(-1, 1) - k.view(1, -1)).abs().float()
        return (-self.slopes.view(1, -1, 1, 1) * distance).to(torch.float32)

    def tensor_parallel_plan(self) -> TensorParallelPlan:
        """Fixed slopes (a buffer, no gradient): each rank keeps its contiguous run of heads, the
        same run that the column split of q gives it."""
        return TensorParallelPlan(shard_local=self._keep_heads, divisible=(per_head(self.slopes.shape[0]),))

    def _keep_heads(self, rank: int, size: int) -> None:
        self.slopes = self.slopes.chunk(size)[rank].contiguous()


def per_head(n_heads: int) -> Divisible:
    """The rule of a per-head bias split over tensor-parallel ranks: whole heads per rank."""
    return Divisible("n_heads", n_heads, "the number of heads of the position bias",
                     "each rank must own whole heads: choose n_heads")


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

    adds_score_bias = True

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

    def tensor_parallel_plan(self) -> TensorParallelPlan:
        """The table is (buckets, n_heads): a column split gives each rank its heads' columns, and
        its output holds just those heads."""
        return TensorParallelPlan(layout={"table": COLWISE}, divisible=(per_head(self.table.embedding_dim),))


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
    ``interleaved`` pairs adjacent features (GPT-J, original paper) instead of the two halves (LLaMA);
    ``scaling`` stretches the frequencies for longer contexts (linear, dynamic, yarn, llama3,
    longrope: see ``rope_scaling``), with transformers' parameter names;
    ``local_theta`` is the base of the sliding-window layers (Gemma 3), which rotate unscaled;
    ``longrope_recompute``: when a generated sequence first grows past the original length, the
    keys cached so far (rotated with the short factors) are recomputed with the long ones, as
    Phi-3's generate does (transformers' LLaMA with longrope keeps them: leave it false there).
    """

    #: the math ``nn.decode_step`` reproduces for this class itself (a subclass declares its own)
    lean_decode = "rope"

    rotates_qk = True

    def __init__(
        self, head_dim: int, theta: float = 10000.0, fraction: float = 1.0, interleaved: bool = False,
        scaling: dict | None = None, local_theta: float | None = None, longrope_recompute: bool = False,
    ):
        super().__init__()
        rot = int(head_dim * fraction)
        if not 0.0 < fraction <= 1.0 or rot <= 0 or rot % 2:
            raise ConfigError(
                f"position rope: fraction must be in (0, 1] and rotary dims = head_dim*fraction = "
                f"{head_dim}*{fraction} a positive even number; change fraction or head_dim"
            )
        if local_theta is not None and (not isinstance(local_theta, (int, float)) or local_theta <= 0):
            raise ConfigError(f"position rope: local_theta must be a positive number (the base of sliding-window "
                              f"layers) or null; got {local_theta!r}")
        self.head_dim, self.fraction, self.local_theta = head_dim, fraction, local_theta
        self.rot_dim, self.interleaved, self.theta = rot, interleaved, theta
        self.scaling = check_scaling(scaling, rot)
        inv_freq, self.attention_factor = frequencies(theta, rot, self.scaling)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        kind = self.scaling["type"] if self.scaling else None
        if kind == "longrope":
            long = longrope_frequencies(theta, rot, self.scaling["long_factor"])
            self.register_buffer("long_inv_freq", long, persistent=False)
        # dynamic NTK: the longest sequence seen since the last one within the original length,
        # and the frequencies for it (transformers keeps the same state: see frequencies_for)
        self._dynamic_len = self.scaling["original_max_position_embeddings"] if kind == "dynamic" else None
        self._dynamic_freq: tuple[int, torch.Tensor] | None = None
        if longrope_recompute and kind != "longrope":
            raise ConfigError("position rope: longrope_recompute is for longrope scaling (scaling: {type: longrope, "
                              "...}); set it false or use longrope")
        self.longrope_recompute = bool(longrope_recompute)
        if self.longrope_recompute:
            self.cache_stale_after = self.scaling["original_max_position_embeddings"]

    def for_sliding_layers(self) -> PositionEncoding:
        """With ``local_theta``: an unscaled RoPE of that base, the same rotary dims and pairing."""
        if self.local_theta is None:
            return self
        local = RoPE(self.head_dim, theta=self.local_theta, fraction=self.fraction, interleaved=self.interleaved)
        return local.to(self.inv_freq.device)

    def frequencies_for(self, positions: torch.Tensor) -> torch.Tensor:
        """The inverse frequencies that rotate ``positions``, as transformers chooses them per call
        from the longest position ``L = max + 1``: longrope takes the long factors when L exceeds the
        original length (a tensor choice, no host sync); dynamic NTK recomputes them when L exceeds
        the longest length seen so far, and returns to the original ones when L is back within
        the original length after having exceeded it (the state lives on between calls, so
        cached keys keep the frequencies they were rotated with, as in transformers' generate)."""
        kind = self.scaling["type"] if self.scaling else None
        if kind == "longrope":
            longest = positions.max() + 1 if positions.numel() else 0
            return torch.where(longest > self.scaling["original_max_position_embeddings"], self.long_inv_freq,
                               self.inv_freq)
        if kind != "dynamic":
            return self.inv_freq
        longest = int(positions.max()) + 1 if positions.numel() else 0
        original = self.scaling["original_max_position_embeddings"]
        if longest > self._dynamic_len:
            self._dynamic_len = longest
        if longest < original and self._dynamic_len > original:
            self._dynamic_len = original
        if self._dynamic_len <= original:
            return self.inv_freq
        cached = self._dynamic_freq
        if cached is None or cached[0] != self._dynamic_len or cached[1].device != self.inv_freq.device:
            freq = dynamic_frequencies(self.theta, self.rot_dim, self.scaling, self._dynamic_len)
            self._dynamic_freq = cached = (self._dynamic_len, freq.to(self.inv_freq.device))
        return cached[1]

    def rotate(self, q, k, q_pos, k_pos):
        q_tables = self.tables(q_pos)
        k_tables = q_tables if k_pos is q_pos else self.tables(k_pos)
        return self._rotate_one(q, *q_tables), self._rotate_one(k, *k_tables)

    def tables(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(cos, signed sin) for ``positions`` (B, T), shaped (B or 1, 1, T, rot_dim) to broadcast
        over the heads of (B, H, T, D) queries and keys. The signed sine carries the minus of the
        rotation (``-sin`` on the features that take the negated partner), so a rotation is
        ``x * cos + swap(x) * signed_sin`` with ``swap`` a plain permutation.

        Positions that are one row expanded over the batch (no padding: ``positions_from``'s
        ``arange().expand()``, stride 0 over rows) give one row of tables, broadcast over the batch.
        Every layer of a stack rotates with the same positions tensor, so the tables of the latest
        positions are kept and reused until another tensor (or an in-place change) comes: they are
        computed once per forward, not once per layer, query and key.
        """
        # (inference tensors keep no version counter: no caching for them, nor while compiling)
        cacheable = not (torch.compiler.is_compiling() or positions.is_inference() or self.inv_freq.is_inference())
        cached = self._tables
        if cacheable and cached is not None and cached[0]() is positions and cached[1] is self.inv_freq \
                and cached[2] == (positions._version, self.inv_freq._version):
            return cached[3]
        rows = positions[:1] if positions.dim() == 2 and positions.stride(0) == 0 else positions
        angles = rows.float().unsqueeze(-1) * self.frequencies_for(positions)  # (B or 1, T, rot/2)
        cos, sin = angles.cos(), angles.sin()
        if self.attention_factor != 1.0:  # YaRN / longrope: scale cos and sin, as transformers does
            cos, sin = cos * self.attention_factor, sin * self.attention_factor
        if self.interleaved:
            cos = cos.repeat_interleave(2, dim=-1)
            signed_sin = torch.stack((-sin, sin), dim=-1).flatten(-2)
        else:
            cos = torch.cat((cos, cos), dim=-1)
            signed_sin = torch.cat((-sin, sin), dim=-1)
        tables = (cos.unsqueeze(1), signed_sin.unsqueeze(1))
        if cacheable:
            self._tables = (weakref.ref(positions), self.inv_freq, (positions._version, self.inv_freq._version), tables)
        return tables

    _tables = None  # (weakref to the positions, the inv_freq used, both versions, the tables)

    def __getstate__(self):
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__.copy()
        state = dict(state)
        state.pop("_tables", None)  # a weakref does not pickle; the tables are remade on demand
        state.pop("_laid_out", None)
        return state

    _laid_out = None  # (the cos table it was made from, {(heads, layout): (cos, signed_sin)})

    def _laid_out_like(self, x: torch.Tensor, cos: torch.Tensor,
                       signed_sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The tables expanded over the heads of ``x`` and stored in its memory layout ((B, T, H, D)
        under the (B, H, T, D) view that ``Attention._heads`` makes). The halves' products then run
        over operands of equal strides; a table broadcast over the heads makes the elementwise
        kernels step through 32-float runs, about twice as slow on CPU. Made once per head count and
        tables (every layer's queries, or keys, reuse them): T x H x D floats each, so only for
        tables of one row (positions without padding), not per example."""
        layout = x.transpose(1, 2).is_contiguous()
        key = (x.shape[1], x.shape[2], layout)
        cached = self._laid_out
        if cached is not None and cached[0] is cos and key in cached[1]:
            return cached[1][key]

        def expand(table: torch.Tensor) -> torch.Tensor:
            rows, heads, length, dim = table.shape[0], x.shape[1], x.shape[2], table.shape[-1]
            if layout:
                return table.transpose(1, 2).expand(rows, length, heads, dim).contiguous().transpose(1, 2)
            return table.expand(rows, heads, length, dim).contiguous()

        tables = (expand(cos), expand(signed_sin))
        if not torch.compiler.is_compiling():
            if cached is None or cached[0] is not cos:
                self._laid_out = cached = (cos, {})
            cached[1][key] = tables
        return tables

    def _swap(self, x: torch.Tensor) -> torch.Tensor:
        """The partner of each feature: the other half (LLaMA), or the other of its pair (GPT-J)."""
        if self.interleaved:
            return x.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)
        half = x.shape[-1] // 2
        return torch.cat((x[..., half:], x[..., :half]), dim=-1)

    def _rotate_one(self, x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
        # x: (B, H, T, D); cos, signed_sin: (B or 1, 1, T, rot)
        rot, rest = x[..., : self.rot_dim], x[..., self.rot_dim :]
        if x.dtype == torch.float32 and not rest.shape[-1] and plain_tensors(x):
            if not self.interleaved:
                if x.device.type == "cpu" and cos.shape[0] == 1:
                    cos, signed_sin = self._laid_out_like(x, cos, signed_sin)
                return _RotateHalves.apply(x, cos, signed_sin)
            return _Rotate.apply(x, cos, signed_sin, self._swap)
        rot = rot.float()
        rotated = torch.addcmul(rot * cos, self._swap(rot), signed_sin).to(x.dtype)
        return torch.cat((rotated, rest), dim=-1) if rest.shape[-1] else rotated


class _Rotate(torch.autograd.Function):
    """``x * cos + swap(x) * signed_sin`` with the rotation's own backward: a rotation is
    orthogonal, so the gradient is the gradient rotated back, ``g * cos + swap(g * signed_sin)``
    (``swap`` is its own inverse). Autograd's version of the same formula differentiates the slices,
    the concatenation and the negation one by one (zero-filled full-size buffers and copies)."""

    @staticmethod
    def forward(ctx, x, cos, signed_sin, swap):
        ctx.save_for_backward(cos, signed_sin)
        ctx.swap = swap
        return torch.addcmul(x * cos, swap(x), signed_sin)

    @staticmethod
    def backward(ctx, grad):
        cos, signed_sin = ctx.saved_tensors
        return torch.add(grad * cos, ctx.swap(grad * signed_sin)), None, None, None


class _RotateHalves(torch.autograd.Function):
    """``_Rotate`` for LLaMA's pairing (feature i with i + D/2), written half by half into one
    output: ``x1 * cos - x2 * sin`` and ``x2 * cos + x1 * sin``. No swapped copy of ``x`` is
    made (``_swap``'s concatenation), so the forward and the backward each write one tensor
    instead of three. ``cos`` and ``signed_sin`` are ``RoPE.tables``' (both halves of ``cos``
    are equal; the second half of ``signed_sin`` is ``+sin``)."""

    @staticmethod
    def forward(ctx, x, cos, signed_sin):
        half = x.shape[-1] // 2
        cos, sin = cos[..., :half], signed_sin[..., half:]
        ctx.save_for_backward(cos, sin)
        return _turn(x, cos, sin, 1.0)

    @staticmethod
    def backward(ctx, grad):
        cos, sin = ctx.saved_tensors
        return _turn(grad, cos, sin, -1.0), None, None


def _turn(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, sign: float) -> torch.Tensor:
    """Rotate the halves of ``x`` by the angles of ``cos``/``sin`` (``sign`` -1: back)."""
    half = x.shape[-1] // 2
    out = torch.empty_like(x)
    x1, x2, out1, out2 = x[..., :half], x[..., half:], out[..., :half], out[..., half:]
    torch.mul(x1, cos, out=out1).addcmul_(x2, sin, value=-sign)
    torch.mul(x2, cos, out=out2).addcmul_(x1, sin, value=sign)
    return out
