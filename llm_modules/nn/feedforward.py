"""Feed-forward blocks, registered under the name of their activation.

Plain blocks are ``out(act(in(x)))``. Gated (GLU-family) blocks are ``out(act(gate(x)) * up(x))``
(Shazeer, 2020); they have three matrices instead of two, so their default hidden size is 2/3 of
the plain block's, which keeps the parameter count equal to the classic 4*d MLP.

A feed-forward block declares its tensor-parallel plan (``tensor_parallel_plan``): the matrices
into the hidden layer split by columns, the one out of it by rows, and the hidden size must divide.
A registered block without that method (a plugin's) is refused under tensor parallelism.
"""

from __future__ import annotations

import functools
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from llm_modules.nn.linear import Linear
from llm_modules.nn.tensor_parallel import COLWISE, ROWWISE, Divisible, TensorParallelPlan
from llm_modules.registry import ACTIVATIONS, ConfigError

Activation = Callable[[torch.Tensor], torch.Tensor]


def default_hidden(d_model: int, gated: bool) -> int:
    """4*d for a plain MLP; round(2/3 * 4*d) for a gated one (same parameter count)."""
    return round(8 * d_model / 3) if gated else 4 * d_model


def hidden_split(into: tuple[str, ...], out: str, hidden: int) -> TensorParallelPlan:
    """The Megatron split of a feed-forward: the ``into`` matrices by columns (each rank owns a slice
    of the hidden units), ``out`` by rows (its all-reduce restores the full output); an uneven split
    would misalign the row-parallel shards, so ``hidden`` must divide."""
    return TensorParallelPlan(
        layout={**{name: COLWISE for name in into}, out: ROWWISE},
        divisible=(Divisible("d_ff", hidden, "the feed-forward hidden size (d_ff, or its default from d_model)",
                             "set d_ff to"),),
    )


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _gelu(approximate: str) -> Activation:
    if approximate not in ("none", "tanh"):
        raise ConfigError(f"activation gelu: approximate must be 'none' (exact erf) or 'tanh'; got {approximate!r}")
    return functools.partial(F.gelu, approximate=approximate)


class MLP(nn.Module):
    """Two-matrix feed-forward ``down(act(up(x)))``."""

    #: the math ``nn.decode_step`` reproduces for this class itself (a subclass declares its own)
    lean_decode = "mlp"

    gated = False
    #: the projection that writes into the residual stream (scaled down with depth by ``nn.init``)
    residual_outputs = ("down",)

    def __init__(self, d_model: int, d_ff: int | None, bias: bool, dropout: float, act: Activation):
        super().__init__()
        hidden = d_ff or default_hidden(d_model, self.gated)
        self.up = Linear(d_model, hidden, bias=bias)
        self.down = Linear(hidden, d_model, bias=bias)
        self.act = act
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.dropout(self.act(self.up(x))))

    def tensor_parallel_plan(self) -> TensorParallelPlan:
        return hidden_split(("up",), "down", self.up.out_features)


class GatedMLP(nn.Module):
    """Three-matrix GLU feed-forward ``down(act(gate(x)) * up(x))``."""

    #: the math ``nn.decode_step`` reproduces for this class itself (a subclass declares its own)
    lean_decode = "gated-mlp"

    gated = True
    #: the projection that writes into the residual stream (scaled down with depth by ``nn.init``)
    residual_outputs = ("down",)

    def __init__(self, d_model: int, d_ff: int | None, bias: bool, dropout: float, act: Activation):
        super().__init__()
        hidden = d_ff or default_hidden(d_model, self.gated)
        self.gate = Linear(d_model, hidden, bias=bias)
        self.up = Linear(d_model, hidden, bias=bias)
        self.down = Linear(hidden, d_model, bias=bias)
        self.act = act
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.dropout(self.act(self.gate(x)) * self.up(x)))

    def tensor_parallel_plan(self) -> TensorParallelPlan:
        return hidden_split(("gate", "up"), "down", self.up.out_features)


@ACTIVATIONS.register("relu")
def relu(d_model: int, d_ff: int | None = None, bias: bool = True, dropout: float = 0.0) -> MLP:
    """ReLU MLP (original Transformer, T5 v1.0)."""
    return MLP(d_model, d_ff, bias, dropout, F.relu)


@ACTIVATIONS.register("gelu")
def gelu(
    d_model: int, d_ff: int | None = None, bias: bool = True, dropout: float = 0.0, approximate: str = "none"
) -> MLP:
    """GELU MLP; ``approximate: tanh`` gives GPT-2/BLOOM's tanh form, the default is exact erf (BERT)."""
    return MLP(d_model, d_ff, bias, dropout, _gelu(approximate))


@ACTIVATIONS.register("swish")
def swish(d_model: int, d_ff: int | None = None, bias: bool = True, dropout: float = 0.0) -> MLP:
    """Swish/SiLU MLP ``x * sigmoid(x)``."""
    return MLP(d_model, d_ff, bias, dropout, F.silu)


ACTIVATIONS.register("silu")(swish)


@ACTIVATIONS.register("glu")
def glu(d_model: int, d_ff: int | None = None, bias: bool = True, dropout: float = 0.0) -> GatedMLP:
    """GLU: sigmoid gate (Dauphin et al.)."""
    return GatedMLP(d_model, d_ff, bias, dropout, torch.sigmoid)


@ACTIVATIONS.register("bilinear")
def bilinear(d_model: int, d_ff: int | None = None, bias: bool = True, dropout: float = 0.0) -> GatedMLP:
    """Bilinear: GLU with no activation on the gate."""
    return GatedMLP(d_model, d_ff, bias, dropout, _identity)


@ACTIVATIONS.register("reglu")
def reglu(d_model: int, d_ff: int | None = None, bias: bool = True, dropout: float = 0.0) -> GatedMLP:
    """ReGLU: ReLU-gated GLU."""
    return GatedMLP(d_model, d_ff, bias, dropout, F.relu)


@ACTIVATIONS.register("geglu")
def geglu(
    d_model: int, d_ff: int | None = None, bias: bool = True, dropout: float = 0.0, approximate: str = "none"
) -> GatedMLP:
    """GeGLU: GELU-gated GLU; ``approximate: tanh`` for T5 v1.1's gated-gelu."""
    return GatedMLP(d_model, d_ff, bias, dropout, _gelu(approximate))


@ACTIVATIONS.register("swiglu")
def swiglu(d_model: int, d_ff: int | None = None, bias: bool = True, dropout: float = 0.0) -> GatedMLP:
    """SwiGLU: SiLU-gated GLU (LLaMA, PaLM)."""
    return GatedMLP(d_model, d_ff, bias, dropout, F.silu)
