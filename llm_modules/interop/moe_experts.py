"""What the MoE families (Mixtral, Qwen2-MoE, Qwen3-MoE) share: the ``moe`` activation slot read from
and written to config.json, its allow-list rule, and the experts' weight entries in both layouts
transformers 5 loads (per expert, as Hub checkpoints and ``save_pretrained`` store them, and fused,
as its modules hold them in memory).

The load-balancing loss: a model read from config.json uses ``aux_loss_form: pooled``, transformers'
own loss, with ``router_aux_loss_coef`` as its weight when ``output_router_logits`` is true and 0
when it is false (transformers then adds no such loss to the training loss). Export writes the
weight back as ``router_aux_loss_coef`` and ``output_router_logits: weight > 0``; the loss changes
no logits, so a model trained with the per-layer form exports too.
"""

from __future__ import annotations

from typing import Any

from llm_modules.config import ModelConfig
from llm_modules.interop.allow import ANY, Slot
from llm_modules.interop.common import hf_value
from llm_modules.interop.llama import _GATED as GATED
from llm_modules.interop.slots import activation_from_hf, activation_to_hf, component
from llm_modules.interop.weights import Layouts, Map, Repeat, stacked
from llm_modules.registry import ConfigError, split_spec

#: the feed-forward roles of our experts, in the order transformers fuses gate and up
ROLES = ("gate", "up", "down")


def moe_from_hf(hf: dict[str, Any], family: str, n_experts: int, **conventions: Any) -> dict[str, Any]:
    """The ``moe`` activation slot of an HF MoE config: experts of ``hidden_act``, top-k, the
    load-balancing loss (module docstring) and the family's routing ``conventions``."""
    weight = float(hf.get("router_aux_loss_coef", 0.001)) if hf.get("output_router_logits") else 0.0
    return {
        "name": "moe",
        "expert": activation_from_hf(hf.get("hidden_act", "silu"), GATED, family),
        "n_experts": n_experts,
        "top_k": hf["num_experts_per_tok"],
        "aux_loss_form": "pooled",
        "aux_loss_weight": weight,
        "bias": False,
        **conventions,
    }


def moe_to_hf(config: ModelConfig) -> dict[str, Any]:
    """config.json fields every MoE family shares: the experts' activation, top-k and the loss."""
    options = component(config, "activation")[1]
    weight = float(options["aux_loss_weight"])
    return {
        "hidden_act": activation_to_hf(config.replace(activation=options["expert"]), GATED),
        "num_experts_per_tok": options["top_k"],
        "router_aux_loss_coef": weight,
        "output_router_logits": weight > 0,
    }


class MoEActivation(Slot):
    """The activation slot of an MoE family: ``moe`` with every option listed as in ``Slot`` (the
    family's routing conventions as fixed values), and experts that are one of the gated
    feed-forwards config.json can name (``hidden_act``), with no options of their own beyond the
    ones that name fixes (their hidden size and bias are the moe's)."""

    def __init__(self, shared_expert: bool = False, **options: Any):
        super().__init__("moe", expert=ANY, n_experts=ANY, top_k=ANY, aux_loss_weight=ANY, d_ff=ANY, dropout=ANY,
                         bias=False, **{"aux_loss_form": ANY, **options})
        #: the family has a shared expert in every layer (its size: shared_d_ff, any)
        object.__setattr__(self, "shared_expert", shared_expert)

    def problems(self, config: ModelConfig, field: str, family: str) -> list[str]:
        found = super().problems(config, field, family)
        name, options = component(config, field)
        if name != "moe":
            return found
        if self.shared_expert and options["shared_d_ff"] is None:
            found.append(f"activation 'moe' without a shared expert (the {family} family has one in every layer; "
                         "set activation.shared_d_ff)")
        expert = options["expert"]
        expert_name, own = split_spec(expert, "activation.expert")
        names = ", ".join(dict.fromkeys(ours for ours, _ in GATED.values()))
        if activation_to_hf(config.replace(activation=expert), GATED) is None:
            return found + [f"activation.expert {expert!r} (the {family} family's experts are one of {names})"]
        fixed = {key for _, values in GATED.values() for key in values}
        return found + [
            f"activation.expert {expert_name!r} with its own {key}={value!r} (the {family} family's experts "
            f"take the moe's d_ff and bias; leave it out)"
            for key, value in own.items() if key not in fixed
        ]


def n_experts(hf: dict[str, Any]) -> int:
    """The routed experts per layer: ``num_experts``, or ``num_local_experts`` (Mixtral's name, and
    the name under which transformers' Qwen3-MoE config saves it)."""
    return int(hf_value(hf, "num_experts", "num_local_experts", default=0))


def refuse_dense_layers(hf: dict[str, Any], family: str) -> None:
    """Refuse a Qwen-MoE config whose layers are not all MoE (``mlp_only_layers``, a
    ``decoder_sparse_step`` > 1, no experts): our layers are all built from one activation slot."""
    n_layers, step = hf["num_hidden_layers"], hf.get("decoder_sparse_step", 1) or 1
    only, experts = set(hf.get("mlp_only_layers") or ()), n_experts(hf)
    dense = [i for i in range(n_layers) if i in only or experts <= 0 or (i + 1) % step]
    if dense:
        raise ConfigError(
            f"{family} config.json: layers {dense} are dense MLPs (mlp_only_layers={sorted(only)}, "
            f"decoder_sparse_step={step}, num_experts={experts}), the others MoE; a model here has "
            "the same feed-forward in every layer, so only configs with every layer MoE (mlp_only_layers empty, "
            "decoder_sparse_step 1) are supported"
        )


def expert_entries(ours: str, theirs: str, fused: str, n_experts: int, names: dict[str, str]) -> Layouts:
    """The routed experts of one layer: per expert ``{theirs}.{j}.{names[role]}.weight`` (what
    export writes, the Hub's layout), or fused ``{fused}.gate_up_proj`` (E, 2F, D) and
    ``{fused}.down_proj`` (E, D, F), transformers 5's modules' own layout, read as well."""
    per_expert = Repeat(n_experts, tuple(
        Map(f"{ours}.experts.{{j}}.{role}.weight", f"{theirs}.{{j}}.{names[role]}.weight") for role in ROLES
    ), index="j")
    mine = [[f"{ours}.experts.{j}.{role}.weight" for j in range(n_experts)] for role in ROLES]
    gate_up = tuple(name for pair in zip(mine[0], mine[1]) for name in pair)
    return Layouts(
        written=(per_expert,),
        alternative=(
            Map(gate_up, f"{fused}.gate_up_proj", stacked(n_experts, parts=2)),
            Map(tuple(mine[2]), f"{fused}.down_proj", stacked(n_experts)),
        ),
    )
