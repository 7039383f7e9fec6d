"""Tensor parallelism and FSDP2 sharding, applied from outside the model (ModelParallelStrategy).

Lightning's ``ModelParallelStrategy`` builds a 2-D device mesh ``(data_parallel, tensor_parallel)`` and
hands it to the LightningModule; ``LanguageModel.configure_model`` then calls ``parallelize``. The torch
model never knows: its linear layers are split by a plan (Megatron-style, torchtitan-style) and its
blocks are sharded with ``fully_shard``. Without a mesh (every other strategy) only ``remember_shapes``
runs.

The plan is the components' own (``tensor_parallel_plan()``, ``llm_modules.nn.tensor_parallel``); this
module only walks the model, checks and applies what each declares, and knows no component type.
Today's built-ins declare, per block:
  attention    q, k, v column-parallel (each rank owns n_heads/tp query heads and n_kv_heads/tp key/value
               heads); o row-parallel (its all-reduce restores the full hidden state).
  feed-forward gate/up column-parallel, down row-parallel; mixture-of-experts declares a refusal.
  positions    ALiBi's slopes and T5's bias table are cut to the rank's heads (per-head additive bias).
Embeddings, norms and the LM head (no plan) are replicated across the tensor-parallel group (as replicated
DTensors, so every parameter lives on the same 2-D mesh) and FSDP-sharded over the data-parallel
group: simple and exact, at the price of a full vocabulary projection per tensor-parallel rank.
A component that a plan names as a part but that declares nothing (a plugin's) is refused.

Also here, because it follows from how the strategies lay out gradients: norm clipping under FSDP
(``clip_sharded_gradients``). Which processes share a batch is ``data.replicas.data_parallel_split``.
"""

from __future__ import annotations

import torch
from torch import nn

from llm_modules.nn.tensor_parallel import (
    COLWISE, ROWWISE, UNDECLARED, TensorParallelPlan, TensorParallelRefusal, plan_of,
)
from llm_modules.registry import ConfigError


def parallelize(lm) -> None:
    """Apply the tensor-parallel plan and fully_shard when the strategy gave the module a device mesh.

    Order matters: tensor parallelism first (it replaces weights by DTensors on the tensor-parallel
    mesh), then FSDP2 over the data-parallel mesh, each block its own unit so that only one block's
    full weights exist at a time, then the whole torch model (embeddings, norms, head). ``lm.model``
    is sharded rather than the LightningModule, because ``training_step`` calls ``lm.model`` and
    never the LightningModule's own forward, which is where FSDP2 hooks in. Parameter shapes are
    noted first, for every strategy (see ``remember_shapes``).
    """
    remember_shapes(lm.model)
    mesh = getattr(lm, "device_mesh", None)
    if mesh is None:
        return
    settings = getattr(lm.trainer.strategy, "pipeline", None)
    if settings is not None:  # the pipeline strategy: its stages are split and sharded each on its own
        from llm_modules.training.pipeline.runner import PipelineRun

        lm.pipeline = PipelineRun(lm, mesh, settings, lm.trainer.strategy.root_device)
        return
    tp_mesh, dp_mesh = mesh["tensor_parallel"], mesh["data_parallel"]
    if tp_mesh.size() > 1:
        check_tensor_parallel(lm.model, tp_mesh.size())
        apply_tensor_parallel(lm.model, tp_mesh)
        replicate_the_rest(lm.model, tp_mesh)
    apply_fully_shard(lm.model, dp_mesh)


def remember_shapes(model: nn.Module) -> None:
    """Note each parameter's shape on the parameter itself (``original_shape``), before any wrapping.

    FSDP (FSDPStrategy) wraps after ``configure_model`` and keeps the same parameter objects but turns
    each into a 1-D slice of a flat shard, so whatever reads shapes afterwards, such as the optimizer's
    "weight decay on matrices only" rule, would see vectors everywhere. DTensors (FSDP2, tensor
    parallel) keep their logical shape; the note is the same for them.
    """
    for param in model.parameters():
        param.original_shape = tuple(param.shape)


def tensor_parallel_plans(model: nn.Module) -> list[tuple[str, nn.Module, TensorParallelPlan]]:
    """Every module's declared plan, in module order, as ``(qualified name, module, plan)``.

    A module answers for itself (``tensor_parallel_plan()``, see ``llm_modules.nn.tensor_parallel``);
    a module whose plan names ``parts`` vouches that those children hold per-head or per-unit work, so
    a part that declares nothing is refused rather than left replicated by accident. A refusal (or a
    silent part) raises ConfigError naming the config field that chose the component.
    """
    plans = []
    for name, module in model.named_modules():
        answer = plan_of(module)
        if answer is None:
            continue
        if isinstance(answer, TensorParallelRefusal):
            raise _refused(module, answer, field=None)
        plans.append((name, module, answer))
        for part, field in answer.parts.items():
            child = getattr(module, part, None)
            if child is None:
                continue
            child_answer = plan_of(child)
            if not isinstance(child_answer, TensorParallelPlan):
                raise _refused(child, child_answer or UNDECLARED, field=field)
    return plans


def _refused(module: nn.Module, refusal: TensorParallelRefusal, field: str | None) -> ConfigError:
    where = f"model.config.{field}: " if field else ""
    return ConfigError(f"{where}{type(module).__name__} {refusal.reason}; under tensor_parallel_size > 1, {refusal.fix}")


def check_tensor_parallel(model: nn.Module, size: int) -> None:
    """Refuse what cannot be split ``size`` ways, naming the field and the fix.

    Everything comes from the modules' declared plans: which parts must split, and which sizes
    must be divisible by ``size`` (whole heads, whole hidden units).
    """
    fix = f" (or lower tensor_parallel_size: trainer.strategy.init_args.tensor_parallel_size={size})"
    for _, _, plan in tensor_parallel_plans(model):
        problems = plan.refusals(size)
        if problems:
            raise ConfigError(problems[0] + fix)


def apply_tensor_parallel(model: nn.Module, tp_mesh) -> None:
    """Split every module that declares a plan over ``tp_mesh``: its ``layout`` through torch's
    ``parallelize_module`` (column/row parallel), its ``shard_local`` state by this rank's share."""
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    styles = {COLWISE: ColwiseParallel, ROWWISE: RowwiseParallel}
    rank, size = tp_mesh.get_local_rank(), tp_mesh.size()
    for _, module, plan in tensor_parallel_plans(model):
        if plan.layout:
            parallelize_module(module, tp_mesh, {child: styles[style]() for child, style in plan.layout.items()})
        if plan.shard_local is not None:
            plan.shard_local(rank, size)


def replicate_the_rest(model: nn.Module, tp_mesh) -> None:
    """Make every parameter the plan did not split a DTensor replicated over ``tp_mesh``.

    Embeddings, norms and the head compute the same thing on every tensor-parallel rank, so they
    could stay plain tensors; but then the model's parameters would live on two meshes (blocks on
    data x tensor, the rest on data only) and anything that reduces over all gradients at once
    (gradient-norm clipping, the loss-spike guard) fails on the mix. As replicated DTensors, they
    share the blocks' 2-D mesh after ``fully_shard``. Each module that owns such a parameter gets
    its inputs as replicated DTensors and returns a plain tensor, so its neighbours see no change.
    A tied parameter (embedding and head) is converted once and stays tied.
    """
    from torch.distributed.tensor import DTensor, Replicate

    def to_dtensor(tensor):
        if isinstance(tensor, torch.Tensor) and not isinstance(tensor, DTensor):
            return DTensor.from_local(tensor, tp_mesh, [Replicate()], run_check=False)
        return tensor

    def inputs(module, args, kwargs):
        return tuple(to_dtensor(a) for a in args), {k: to_dtensor(v) for k, v in kwargs.items()}

    def output(module, args, out):
        return out.to_local() if isinstance(out, DTensor) else out

    converted: dict[int, nn.Parameter] = {}
    for module in model.modules():
        own = [(n, p) for n, p in module._parameters.items() if p is not None and not isinstance(p, DTensor)]
        for name, param in own:
            if id(param) not in converted:
                converted[id(param)] = nn.Parameter(to_dtensor(param.data), requires_grad=param.requires_grad)
            module.register_parameter(name, converted[id(param)])
        if own:
            module.register_forward_pre_hook(inputs, with_kwargs=True)
            module.register_forward_hook(output)


def apply_fully_shard(model: nn.Module, dp_mesh) -> None:
    """FSDP2 over ``dp_mesh``: each entry of every stack's ``layers`` (a block, or the wrapper that
    activation checkpointing put around it) is one unit, then the model root takes what is left."""
    from torch.distributed.fsdp import fully_shard

    units = [unit for m in model.modules() if callable(getattr(m, "fsdp_units", None)) for unit in m.fsdp_units()]
    for unit in units:
        fully_shard(unit, mesh=dp_mesh)
    fully_shard(model, mesh=dp_mesh)


def clip_sharded_gradients(trainer, max_norm: float | None, algorithm: str | None) -> bool:
    """Clip to a global gradient norm under FSDP (FSDPStrategy) or pipeline parallelism (the
    norm over every stage, ``grad_norm``); return whether it was done here.

    FSDP's gradients are local shards of flattened parameters: a norm over them is one rank's
    share, so Lightning's FSDP precision plugin refuses norm clipping altogether, which would make
    the recipe's default ``gradient_clip_val`` fail. FSDP's root module computes the global norm (one
    all-reduce) and scales every shard. Other strategies return False and clip as Lightning does:
    DDP and ModelParallelStrategy (whose DTensor gradients reduce their own norms); DeepSpeed clips
    inside its engine.
    """
    from lightning.pytorch.strategies import FSDPStrategy

    if not max_norm or algorithm not in (None, "norm"):
        return False
    if getattr(trainer.strategy, "pipeline", None) is not None:  # the norm spans every pipeline stage
        from llm_modules.training.grad_norm import grad_norm

        lm = trainer.lightning_module
        norm = grad_norm(lm)
        if norm is not None:
            params = [p for p in lm.parameters() if p.grad is not None]
            torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
        return True
    if not isinstance(trainer.strategy, FSDPStrategy):
        return False
    trainer.strategy.model.clip_grad_norm_(max_norm)
    return True
