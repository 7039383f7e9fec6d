"""Mixture-of-experts feed-forward: a router sends each token to its top-k experts."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from llm_modules.nn.init import xavier_linears
from llm_modules.nn.tensor_parallel import TensorParallelRefusal
from llm_modules.registry import ACTIVATIONS, ConfigError, split_spec


@ACTIVATIONS.register("moe")
class MixtureOfExperts(nn.Module):
    """Top-k routed experts over any registered feed-forward, with a load-balancing loss (Switch/GShard).

    After each forward, ``aux_loss`` holds ``weight * n_experts * sum_e(f_e * P_e)``, where f_e is the
    share of routed slots that went to expert e and P_e its mean router probability; it is minimal
    (= weight) when the load is uniform. The LM adds every such loss to its objective.
    """

    #: each token reaches only its top-k experts, so an expert that no token chose in a step gets no
    #: gradient in it (DDP then needs ``find_unused_parameters``)
    routes_tokens = True
    #: (with routes_tokens) the estimator assumes an even share of tokens over ``n_experts`` experts,
    #: and ``routed_parameters`` gives FLOP counts the share of tokens each expert serves

    def __init__(
        self,
        d_model: int,
        d_ff: int | None = None,
        bias: bool = True,
        dropout: float = 0.0,
        expert: Any = "swiglu",
        n_experts: int = 8,
        top_k: int = 2,
        aux_loss_weight: float = 0.01,
    ):
        super().__init__()
        if split_spec(expert, "activation.expert")[0] == "moe":
            raise ConfigError("activation.expert: an expert cannot itself be 'moe'; use e.g. swiglu")
        if not 1 <= top_k <= n_experts:
            raise ConfigError(f"activation.top_k must be between 1 and n_experts={n_experts}; got {top_k}")
        self.n_experts, self.top_k, self.aux_loss_weight = n_experts, top_k, aux_loss_weight
        self.router = nn.Linear(d_model, n_experts, bias=False)
        self.experts = nn.ModuleList(
            ACTIVATIONS.build(expert, d_model=d_model, d_ff=d_ff, bias=bias, dropout=dropout)
            for _ in range(n_experts)
        )
        self.aux_loss = torch.zeros(())

    def routed_parameters(self):
        """(parameter, share) for the parameters a token uses only when routed to them: each
        expert's, used by top_k of every n_experts tokens (what a FLOP count multiplies by)."""
        share = self.top_k / self.n_experts
        for param in self.experts.parameters():
            yield param, share

    def deepnet_init(self, beta: float) -> None:
        """DeepNet's init (``Block.layout_init``) for the experts; the router is no residual-branch
        projection and keeps its normal init."""
        for expert in self.experts:
            xavier_linears(expert, beta)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        probs = self.router(flat).float().softmax(-1)
        top_p, top_i = probs.topk(self.top_k, dim=-1)
        top_p = top_p / top_p.sum(-1, keepdim=True)
        out = torch.zeros_like(flat)
        for e, expert in enumerate(self.experts):
            rows, slot = (top_i == e).nonzero(as_tuple=True)
            if rows.numel():
                weight = top_p[rows, slot].unsqueeze(-1).to(flat.dtype)
                out.index_add_(0, rows, expert(flat[rows]) * weight)
        share = torch.bincount(top_i.flatten(), minlength=self.n_experts).float() / top_i.numel()
        self.aux_loss = self.aux_loss_weight * self.n_experts * (share * probs.mean(0)).sum()
        return out.reshape(x.shape)

    def tensor_parallel_plan(self) -> TensorParallelRefusal:
        """Refused: the router sends each token to different experts, so splitting every expert's
        matrices would all-reduce per expert per token subset; expert parallelism is another plan."""
        return TensorParallelRefusal(
            "routes tokens among experts and has no tensor-parallel plan (only plain and gated MLPs do)"
        )
