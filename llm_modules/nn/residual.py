"""Residual layouts: where the norms sit around each sublayer (attention, cross-attention, FFN).

A layout owns the norms of one block and is called with the block's input and its sublayers as
functions of a normalized hidden state. It declares what the rest of the model asks of it:
``needs_final_norm`` (whether the stack should end with a norm: pre-norm stacks leave the residual
stream unnormalized, post-norm stacks do not), ``init_gain`` (the DeepNet init gain of the block's
value/output/FFN projections) and ``places_cross_attention`` (whether it can wire a third sublayer,
an encoder-decoder's cross-attention; a layout that cannot refuses at build as well).
"""

from __future__ import annotations

import abc

from typing import Callable, Sequence

import torch
from torch import nn

from llm_modules.registry import RESIDUALS, ConfigError

Sublayer = Callable[[torch.Tensor], torch.Tensor]
NormFactory = Callable[[], nn.Module]


class ResidualLayout(nn.Module, abc.ABC):
    """Base class; ``forward(x, sublayers)`` runs the sublayers in order."""

    needs_final_norm = True
    #: gain for the DeepNet init of value/output/FFN projections (1.0: the standard init)
    init_gain = 1.0
    #: can wire cross-attention as a third sublayer (encoder-decoder decoders)
    places_cross_attention = True

    @abc.abstractmethod
    def forward(self, x: torch.Tensor, sublayers: Sequence[Sublayer]) -> torch.Tensor:
        """The block's output."""


@RESIDUALS.register("pre")
class PreNorm(ResidualLayout):
    """Pre-norm ``x + f(norm(x))``: stable at depth without warmup tricks (GPT-2, LLaMA, T5)."""

    #: the math ``nn.decode_step`` reproduces for this class itself (a subclass declares its own)
    lean_decode = "pre-norm"

    def __init__(self, make_norm: NormFactory, n_sublayers: int):
        super().__init__()
        self.norms = nn.ModuleList(make_norm() for _ in range(n_sublayers))

    def forward(self, x, sublayers):
        for norm, f in zip(self.norms, sublayers):
            x = x + f(norm(x))
        return x


@RESIDUALS.register("post")
class PostNorm(ResidualLayout):
    """Post-norm ``norm(x + f(x))``: the original Transformer and BERT."""

    needs_final_norm = False

    def __init__(self, make_norm: NormFactory, n_sublayers: int):
        super().__init__()
        self.norms = nn.ModuleList(make_norm() for _ in range(n_sublayers))

    def forward(self, x, sublayers):
        for norm, f in zip(self.norms, sublayers):
            x = norm(x + f(x))
        return x


@RESIDUALS.register("sandwich")
class SandwichNorm(ResidualLayout):
    """Sandwich-norm ``x + norm_out(f(norm_in(x)))`` (CogView): also normalizes each sublayer's output."""

    def __init__(self, make_norm: NormFactory, n_sublayers: int):
        super().__init__()
        self.norms_in = nn.ModuleList(make_norm() for _ in range(n_sublayers))
        self.norms_out = nn.ModuleList(make_norm() for _ in range(n_sublayers))
        #: a fixed factor on each normalized output whose norm has no gain to start small (see default_init)
        self.output_scales = [1.0] * n_sublayers

    def forward(self, x, sublayers):
        for norm_in, norm_out, scale, f in zip(self.norms_in, self.norms_out, self.output_scales, sublayers):
            h = norm_out(f(norm_in(x)))
            x = x + (h if scale == 1.0 else h * scale)
        return x

    def default_init(self, init) -> None:
        """Each normalized sublayer output starts small (``start_outputs_small``)."""
        start_outputs_small(self.norms_out, self.output_scales, init)


@RESIDUALS.register("post_sublayer")
class PostSublayerNorm(ResidualLayout):
    """``x + norm(f(x))``: each sublayer's output is normalized before it joins the residual
    stream, and its input is not (OLMo 2). The stream itself stays unnormalized, so the stack ends
    with a final norm as in pre-norm."""

    def __init__(self, make_norm: NormFactory, n_sublayers: int):
        super().__init__()
        self.norms = nn.ModuleList(make_norm() for _ in range(n_sublayers))
        #: a fixed factor on each normalized output whose norm has no gain to start small
        self.output_scales = [1.0] * n_sublayers

    def forward(self, x, sublayers):
        for norm, scale, f in zip(self.norms, self.output_scales, sublayers):
            h = norm(f(x))
            x = x + (h if scale == 1.0 else h * scale)
        return x

    def default_init(self, init) -> None:
        """Each normalized sublayer output starts small (``start_outputs_small``)."""
        start_outputs_small(self.norms, self.output_scales, init)


def start_outputs_small(norms: nn.ModuleList, scales: list[float], init) -> None:
    """Each normalized sublayer output starts at ``init.residual_std``, not at unit scale.

    The residual stream starts at the embeddings' scale (``init.std``, 0.02); output norms at
    identity would add 2 x n_layers unit-scale terms to it and drown the token's own embedding
    (50:1 at the default std), so that the model learned only token frequencies. At
    ``residual_std`` the sublayers together add about the embeddings' variance, as the scaled
    output projections of a pre-norm model do. A norm with a gain starts it there
    (``reset_gain``); for a norm without one (non-parametric LayerNorm) the layout keeps that
    factor itself in ``scales``, fixed: it follows from the config, so it is no state to save.
    """
    for i, norm in enumerate(norms):
        reset_gain = getattr(norm, "reset_gain", None)
        if callable(reset_gain):
            reset_gain(init.residual_std)
        else:
            scales[i] = init.residual_std


@RESIDUALS.register("deepnorm")
class DeepNorm(ResidualLayout):
    """DeepNorm ``norm(alpha * x + f(x))`` with the DeepNet init (Wang et al., 2022): post-norm made deep.

    ``alpha`` and the init gain ``beta`` default to the paper's values for the model's architecture
    (encoder-only, decoder-only or encoder-decoder) and depth; set them to override.
    """

    needs_final_norm = False

    def __init__(self, make_norm: NormFactory, n_sublayers: int, alpha: float = 1.0, beta: float = 1.0):
        super().__init__()
        self.alpha, self.init_gain = alpha, beta
        self.norms = nn.ModuleList(make_norm() for _ in range(n_sublayers))

    def forward(self, x, sublayers):
        for norm, f in zip(self.norms, sublayers):
            x = norm(self.alpha * x + f(x))
        return x

    def extra_repr(self) -> str:
        return f"alpha={self.alpha:.4g}, beta={self.init_gain:.4g}"


@RESIDUALS.register("parallel")
class ParallelBlock(ResidualLayout):
    """Parallel ``x + attn(norm(x)) + ffn(norm(x))`` with one shared norm (GPT-J, PaLM).

    ``shared_norm: false`` gives each sublayer its own norm (GPT-NeoX). Cross-attention has no
    parallel form here: an encoder-decoder decoder must use another layout.
    """

    places_cross_attention = False

    def __init__(self, make_norm: NormFactory, n_sublayers: int, shared_norm: bool = True):
        super().__init__()
        if n_sublayers != 2:
            raise ConfigError(
                "residual 'parallel' runs attention and feed-forward side by side and cannot place "
                "cross-attention; use residual 'pre' for encoder-decoder models"
            )
        self.norms = nn.ModuleList(make_norm() for _ in range(1 if shared_norm else n_sublayers))

    def forward(self, x, sublayers):
        if len(self.norms) == 1:
            h = self.norms[0](x)
            return x + sum(f(h) for f in sublayers)
        return x + sum(f(norm(x)) for norm, f in zip(self.norms, sublayers))


def deepnorm_constants(n_encoder: int, n_decoder: int) -> dict[str, tuple[float, float]]:
    """DeepNet's (alpha, beta) per stack. Pass 0 layers for a stack the model does not have.

    Encoder-only or decoder-only with N layers: alpha = (2N)^(1/4), beta = (8N)^(-1/4).
    Encoder-decoder: encoder alpha = 0.81 (N^4 M)^(1/16), beta = 0.87 (N^4 M)^(-1/16);
    decoder alpha = (3M)^(1/4), beta = (12M)^(-1/4).
    """
    if n_encoder and n_decoder:
        n, m = n_encoder, n_decoder
        return {
            "encoder": (0.81 * (n**4 * m) ** (1 / 16), 0.87 * (n**4 * m) ** (-1 / 16)),
            "decoder": ((3 * m) ** 0.25, (12 * m) ** -0.25),
        }
    layers = n_encoder or n_decoder
    pair = ((2 * layers) ** 0.25, (8 * layers) ** -0.25)
    return {"encoder": pair, "decoder": pair}


