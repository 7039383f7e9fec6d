"""Weight initialisation: a scaled normal init, and the DeepNet init for DeepNorm blocks."""

from __future__ import annotations

import math

from torch import nn

from llm_modules.nn.transformer import Block

#: names of the projections that write into the residual stream (scaled down with depth)
RESIDUAL_OUTPUTS = ("o", "down")


def init_weights(model: nn.Module, std: float, n_layers: int) -> None:
    """Normal(0, std) for linear and embedding weights, zero biases, norms left at identity.

    Projections that write into the residual stream get std / sqrt(2 * n_layers) (GPT-2), so the
    stream's variance does not grow with depth. Blocks whose residual layout asks for an init gain
    (DeepNorm's beta) get DeepNet's init instead: Xavier-normal with gain beta for the value,
    output and feed-forward projections, and gain 1 for queries and keys.
    """
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0.0, std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, 0.0, std)
    scaled = std / math.sqrt(2 * max(n_layers, 1))
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in RESIDUAL_OUTPUTS:
            nn.init.normal_(module.weight, 0.0, scaled)
    for block in model.modules():
        if isinstance(block, Block) and block.residual.init_gain != 1.0:
            deepnet_init(block, block.residual.init_gain)


def deepnet_init(block: Block, beta: float) -> None:
    for attn in (block.attn, block.cross_attn):
        if attn is None:
            continue
        for proj, gain in ((attn.q, 1.0), (attn.k, 1.0), (attn.v, beta), (attn.o, beta)):
            nn.init.xavier_normal_(proj.weight, gain=gain)
    for module in block.ffn.modules():
        if isinstance(module, nn.Linear) and module is not getattr(block.ffn, "router", None):
            nn.init.xavier_normal_(module.weight, gain=beta)
