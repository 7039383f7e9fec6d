"""Mixture-of-experts feed-forward: a router sends each token to its top-k experts.

The options follow the routing conventions of the published MoE models, so that each one computes
what transformers computes for it:

- softmax over all experts, then top-k, then the k weights renormalized to sum to 1 (Mixtral; the
  default), or kept as they are (``normalize_top_k: false``: Qwen-MoE's ``norm_topk_prob: false``);
- a shared expert every token passes through beside the routed ones (``shared_d_ff``: its hidden
  size), scaled by a sigmoid gate of the token (``shared_gate``, Qwen2-MoE);
- where the routing weights are rounded: the softmax is always taken in float32; Mixtral keeps the
  weights in float32 and scales each expert's output in float32 before adding it to the result in
  the activations' dtype (``fp32_combine: true``, the default), Qwen-MoE rounds the weights to the
  router's output dtype first (false). In float32 the two are the same;
- Mixtral's router jitter (``jitter_noise``): in training, the tokens the router and the experts
  see are multiplied by noise uniform in [1 - j, 1 + j].

The load-balancing loss has two forms (``aux_loss_form``):

- ``per_layer`` (the default): Switch/GShard's loss of each layer on its own,
  ``weight * n_experts * sum_e(f_e * P_e)`` with f_e the share of the layer's routed slots that
  went to expert e and P_e its mean router probability; minimal (= weight per layer) when the load
  is uniform. Every layer is held to balance its own load.
- ``pooled``: transformers' ``load_balancing_loss_func`` (Mixtral, Qwen-MoE), which counts each
  expert's top-k assignments per token and its probabilities over every MoE layer and every
  non-padding token together, and multiplies the two pooled means:
  ``weight * n_experts * sum_e(F_e * P_e)`` (F_e sums to top_k; minimal = weight * top_k). Layers
  imbalanced in opposite directions cancel in it, which is why it is not the default; it is there so
  that a model imported from transformers fine-tunes with the objective transformers gives it
  (``router_aux_loss_coef``). It needs the batch's padding, which the LM passes to ``aux_loss``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from llm_modules.nn.init import xavier_linears
from llm_modules.nn.tensor_parallel import TensorParallelRefusal
from llm_modules.registry import ACTIVATIONS, ConfigError, split_spec

AUX_LOSS_FORMS = ("per_layer", "pooled")


@ACTIVATIONS.register("moe")
class MixtureOfExperts(nn.Module):
    """Top-k routed experts over any registered feed-forward, an optional gated shared expert, and a
    load-balancing loss (see the module docstring for the options).

    After each forward, ``aux_loss`` holds the layer's loss (``aux_loss_form: per_layer``), or
    ``routing`` holds the router probabilities and choices that ``pooled_balance_loss`` combines
    over all layers and then releases (``pooled``, then ``aux_loss`` is None). The LM adds the
    losses to its objective.
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
        normalize_top_k: bool = True,
        shared_d_ff: int | None = None,
        shared_gate: bool = True,
        fp32_combine: bool = True,
        aux_loss_form: str = "per_layer",
        jitter_noise: float = 0.0,
    ):
        super().__init__()
        if split_spec(expert, "activation.expert")[0] == "moe":
            raise ConfigError("activation.expert: an expert cannot itself be 'moe'; use e.g. swiglu")
        if not 1 <= top_k <= n_experts:
            raise ConfigError(f"activation.top_k must be between 1 and n_experts={n_experts}; got {top_k}")
        if aux_loss_form not in AUX_LOSS_FORMS:
            raise ConfigError(f"activation.aux_loss_form must be one of {', '.join(AUX_LOSS_FORMS)}; "
                              f"got {aux_loss_form!r}")
        if shared_d_ff is not None and (isinstance(shared_d_ff, bool) or not isinstance(shared_d_ff, int)
                                        or shared_d_ff < 1):
            raise ConfigError(f"activation.shared_d_ff must be a positive integer or null (no shared expert); "
                              f"got {shared_d_ff!r}")
        if not 0.0 <= jitter_noise < 1.0:
            raise ConfigError(f"activation.jitter_noise must be in [0, 1); got {jitter_noise}")
        self.n_experts, self.top_k, self.aux_loss_weight = n_experts, top_k, aux_loss_weight
        self.normalize_top_k, self.fp32_combine = bool(normalize_top_k), bool(fp32_combine)
        self.aux_loss_form, self.jitter_noise = aux_loss_form, float(jitter_noise)
        self.router = nn.Linear(d_model, n_experts, bias=False)
        self.experts = nn.ModuleList(
            ACTIVATIONS.build(expert, d_model=d_model, d_ff=d_ff, bias=bias, dropout=dropout)
            for _ in range(n_experts)
        )
        self.shared = None if shared_d_ff is None else ACTIVATIONS.build(
            expert, d_model=d_model, d_ff=shared_d_ff, bias=bias, dropout=dropout
        )
        self.shared_gate = nn.Linear(d_model, 1, bias=False) if self.shared is not None and shared_gate else None
        self.aux_loss: torch.Tensor | None = torch.zeros(()) if aux_loss_form == "per_layer" else None
        self.routing: tuple[torch.Tensor, torch.Tensor] | None = None

    def routed_parameters(self):
        """(parameter, share) for the parameters a token uses only when routed to them: each
        expert's, used by top_k of every n_experts tokens (what a FLOP count multiplies by). The
        router and the shared expert serve every token, so they are not listed."""
        share = self.top_k / self.n_experts
        for param in self.experts.parameters():
            yield param, share

    def deepnet_init(self, beta: float) -> None:
        """DeepNet's init (``Block.layout_init``) for the experts and the shared expert; the router
        and the shared expert's gate are no residual-branch projections and keep their normal init."""
        for expert in self.experts:
            xavier_linears(expert, beta)
        if self.shared is not None:
            xavier_linears(self.shared, beta)

    def route(self, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Router probabilities (N, n_experts; float32), the top-k weights (N, k) and the experts
        chosen (N, k) for tokens ``flat`` (N, d_model)."""
        logits = self.router(flat)
        probs = logits.float().softmax(-1)
        top_p, top_i = probs.topk(self.top_k, dim=-1)
        if self.normalize_top_k:
            top_p = top_p / top_p.sum(-1, keepdim=True)
        if not self.fp32_combine:
            top_p = top_p.to(logits.dtype)
        return probs, top_p, top_i

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.jitter_noise > 0:
            x = x * torch.empty_like(x).uniform_(1.0 - self.jitter_noise, 1.0 + self.jitter_noise)
        flat = x.reshape(-1, x.shape[-1])
        probs, top_p, top_i = self.route(flat)
        out = torch.zeros_like(flat)
        for e, expert in enumerate(self.experts):
            rows, slot = (top_i == e).nonzero(as_tuple=True)
            if rows.numel():
                # float32 weights (fp32_combine) scale in float32, then round to the result's dtype
                out.index_add_(0, rows, (expert(flat[rows]) * top_p[rows, slot].unsqueeze(-1)).to(out.dtype))
        if self.shared is not None:
            shared = self.shared(flat)
            if self.shared_gate is not None:
                shared = torch.sigmoid(self.shared_gate(flat)) * shared
            out = out + shared
        if self.aux_loss_form == "per_layer":
            share = torch.bincount(top_i.flatten(), minlength=self.n_experts).float() / top_i.numel()
            self.aux_loss = self.aux_loss_weight * self.n_experts * (share * probs.mean(0)).sum()
        else:
            self.routing = (probs, top_i)
        return out.reshape(x.shape)

    def tensor_parallel_plan(self) -> TensorParallelRefusal:
        """Refused: the router sends each token to different experts, so splitting every expert's
        matrices would all-reduce per expert per token subset; expert parallelism is another plan."""
        return TensorParallelRefusal(
            "routes tokens among experts and has no tensor-parallel plan (only plain and gated MLPs do)"
        )


def pooled_balance_loss(model: nn.Module, attention_mask: torch.Tensor | None = None) -> torch.Tensor | None:
    """transformers' load-balancing loss over every ``aux_loss_form: pooled`` MoE layer of ``model``
    after its last forward (None when it has none): each expert's top-k assignments and its router
    probabilities summed over all those layers and real tokens, ``F_e`` and ``P_e`` their means per
    token, and ``weight * n_experts * sum_e(F_e * P_e)``.

    ``attention_mask`` (B, T) is the padding of the tokens the model's first stack reads (its
    ``stacks()``, in data-flow order; the whole model when it declares none): padding positions
    are left out there, as transformers leaves them out. Layers that route other rows (a decoder
    after an encoder, a learned prompt before the input) count every row. Layers with different
    expert counts or weights are pooled in separate groups, whose losses add.

    Reading releases what the layers kept (a (tokens, n_experts) tensor each, which would otherwise
    stay allocated until the next forward): each forward's routing is pooled once, and a second
    call before the next forward finds none.
    """
    stacks = model.stacks() if callable(getattr(model, "stacks", None)) else [model]
    groups: dict[tuple[int, int, float], list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]] = {}
    for index, stack in enumerate(stacks):
        for m in stack.modules():
            if isinstance(m, MixtureOfExperts) and m.aux_loss_form == "pooled" and m.routing is not None:
                (probs, top_i), m.routing = m.routing, None
                mask = attention_mask if index == 0 else None
                if mask is not None and mask.numel() != probs.shape[0]:
                    mask = None
                groups.setdefault((m.n_experts, m.top_k, m.aux_loss_weight), []).append((probs, top_i, mask))
    losses = []
    for (n_experts, top_k, weight), layers in groups.items():
        counts = probs_sum = rows = 0
        for probs, top_i, mask in layers:
            real = torch.ones(probs.shape[0], device=probs.device) if mask is None else mask.reshape(-1).to(probs)
            chosen = torch.zeros(n_experts, device=probs.device).scatter_add_(
                0, top_i.reshape(-1), real.repeat_interleave(top_k)
            )
            counts = counts + chosen
            probs_sum = probs_sum + (probs * real.unsqueeze(-1)).sum(0)
            rows = rows + real.sum()
        losses.append(weight * n_experts * ((counts / rows) * (probs_sum / rows)).sum())
    return torch.stack(losses).sum() if losses else None
