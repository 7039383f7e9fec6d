"""Weight initialisation: a scaled normal init for plain layers, the DeepNet init for DeepNorm
blocks, and the hook by which a component owns the rest of its default init.

The plain layers (``nn.Linear``, ``nn.Embedding``) all start the same way, whatever component holds
them: normal(0, ``init_std``), and ``init_std / sqrt(2 * n_layers)`` for the projections that write
into the residual stream. So the residual stream starts at the scale of the embeddings, ``init_std``
(0.02 by default), not at unit scale. A component whose behaviour depends on that scale (a layout
that normalizes each sublayer's output, a norm that does not compute statistics) says so by defining

    def default_init(self, init: InitScale) -> None: ...

which ``init_weights`` calls on every module that has it, children before parents, after the
plain layers are set: the component knows what its parameters must start at, nothing here
switches on its type or name. Without these hooks, sandwich-norm models and every model using the
example plugin's ``dyt`` norm learned only the unigram distribution on a copy task
(``benchmarks/copy_task.py``, ``tests/unit/test_defaults_learn.py``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn



@dataclass(frozen=True)
class InitScale:
    """What a component's ``default_init`` may need to know about the model it starts in."""

    #: std of the plain layers' normal init (``ModelConfig.init_std``): the residual stream's scale at init
    std: float
    #: blocks in the model (both stacks of an encoder-decoder)
    n_layers: int

    @property
    def residual_std(self) -> float:
        """The std of what one sublayer writes into the residual stream at init (GPT-2's
        ``std / sqrt(2 * n_layers)``): all sublayers together then add about the embeddings' variance."""
        return self.std / math.sqrt(2 * max(self.n_layers, 1))


def children_first(module: nn.Module, seen: set[int] | None = None) -> Iterator[nn.Module]:
    """Every module under ``module`` once (itself last), each after its children: a component's
    ``default_init`` then runs after those of the parts it holds, and may adjust them."""
    seen = set() if seen is None else seen
    if id(module) in seen:
        return
    seen.add(id(module))
    for child in module.children():
        yield from children_first(child, seen)
    yield module


def init_weights(model: nn.Module, std: float, n_layers: int) -> None:
    """Normal(0, std) for linear and embedding weights, zero biases, norms left at identity; then
    what the components declare, each in its own pass:

    - ``residual_outputs``: names of a module's projections that write into the residual stream
      (attention's ``o``, a feed-forward's ``down``); they start at std / sqrt(2 * n_layers)
      (GPT-2), so the stream's variance does not grow with depth.
    - ``layout_init()``: what a block's residual layout asks of the block's projections (DeepNorm's
      DeepNet init: Xavier-normal with gain beta for value, output and feed-forward, gain 1 for
      queries and keys).
    - ``default_init(InitScale)``: anything else a component owns, children before parents.

    The passes run in module order, so a model's init draws the same random numbers whatever
    components it holds that declare nothing.
    """
    init = InitScale(std, n_layers)
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0.0, std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, 0.0, std)
    for module in model.modules():
        for name in getattr(module, "residual_outputs", ()):
            nn.init.normal_(getattr(module, name).weight, 0.0, init.residual_std)
    for module in model.modules():
        layout_init = getattr(module, "layout_init", None)
        if callable(layout_init):
            layout_init()
    with torch.no_grad():
        for module in children_first(model):
            own = getattr(module, "default_init", None)
            if callable(own):
                own(init)


def xavier_linears(module: nn.Module, gain: float) -> None:
    """Xavier-normal init with ``gain`` for every linear layer under ``module`` (DeepNet)."""
    for child in module.modules():
        if isinstance(child, nn.Linear):
            nn.init.xavier_normal_(child.weight, gain=gain)
