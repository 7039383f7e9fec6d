"""Tensor parallelism and FSDP2 sharding, applied from outside the model (ModelParallelStrategy).

Lightning's ``ModelParallelStrategy`` builds a 2-D device mesh ``(data_parallel, tensor_parallel)`` and
hands it to the LightningModule; ``LanguageModel.configure_model`` then calls ``parallelize``. The torch
model never knows: its linear layers are split by a plan (Megatron-style, torchtitan-style) and its
blocks are sharded with ``fully_shard``. Without a mesh (every other strategy) only ``remember_shapes``
runs.

The plan, per block:
  attention    q, k, v column-parallel (each rank owns n_heads/tp query heads and n_kv_heads/tp key/value
               heads); o row-parallel (its all-reduce restores the full hidden state).
  feed-forward gate/up column-parallel, down row-parallel.
  positions    ALiBi's slopes and T5's bias table are cut to the rank's heads (per-head additive bias).
Embeddings, norms and the LM head are replicated across the tensor-parallel group (as replicated
DTensors, so every parameter lives on the same 2-D mesh) and FSDP-sharded over the data-parallel
group: simple and exact, at the price of a full vocabulary projection per tensor-parallel rank.
Mixture-of-experts feed-forwards are refused under tensor parallelism (FSDP alone shards them).

Also here, because it follows from how the strategies lay out gradients: norm clipping under FSDP
(``clip_sharded_gradients``). Which processes share a batch is ``data.replicas.data_parallel_split``.
"""

from __future__ import annotations

import torch
from torch import nn

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
    tp_mesh, dp_mesh = mesh["tensor_parallel"], mesh["data_parallel"]
    if tp_mesh.size() > 1:
        check_tensor_parallel(lm.config, lm.model, tp_mesh.size())
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


def check_tensor_parallel(config, model: nn.Module, size: int) -> None:
    """Refuse what cannot be split ``size`` ways, naming the field and the fix."""
    from llm_modules.nn.feedforward import MLP, GatedMLP
    from llm_modules.nn.positions import ALiBi, T5RelativeBias
    from llm_modules.nn.transformer import Block, Stack

    fix = f"or lower tensor_parallel_size (trainer.strategy.init_args.tensor_parallel_size={size})"
    for field, heads in (("n_heads", config.n_heads), ("n_kv_heads", config.kv_heads)):
        if heads % size:
            raise ConfigError(
                f"model.config.{field}={heads} is not divisible by tensor_parallel_size={size}: each rank "
                f"must own whole heads; choose {field} a multiple of {size} {fix}"
            )
    for module in model.modules():
        if isinstance(module, Block) and not isinstance(module.ffn, (MLP, GatedMLP)):
            raise ConfigError(
                f"model.config.activation: {type(module.ffn).__name__} has no tensor-parallel plan (only plain "
                f"and gated MLPs do); use data parallelism alone (tensor_parallel_size: 1, FSDP shards it) {fix}"
            )
        if isinstance(module, Block) and module.ffn.up.out_features % size:
            # An uneven split would leave the row-parallel down projection's shards misaligned.
            hidden = module.ffn.up.out_features
            raise ConfigError(
                f"model.config.d_ff: the feed-forward hidden size {hidden} (d_ff, or its default from d_model) "
                f"is not divisible by tensor_parallel_size={size}; set d_ff to a multiple of {size} {fix}"
            )
        if isinstance(module, Stack) and module.position.bias(1, 1) is not None:
            if not isinstance(module.position, (ALiBi, T5RelativeBias)):
                raise ConfigError(
                    f"model.config.position: {type(module.position).__name__} adds a per-head bias that has no "
                    f"tensor-parallel split; use rope/alibi/t5 {fix}"
                )


def apply_tensor_parallel(model: nn.Module, tp_mesh) -> None:
    """Split every block's attention and feed-forward, and per-head position biases, over ``tp_mesh``."""
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    from llm_modules.nn.attention import Attention
    from llm_modules.nn.feedforward import GatedMLP
    from llm_modules.nn.positions import ALiBi, T5RelativeBias
    from llm_modules.nn.transformer import Block, Stack

    attention_plan = {"q": ColwiseParallel(), "k": ColwiseParallel(), "v": ColwiseParallel(), "o": RowwiseParallel()}
    for module in model.modules():
        if isinstance(module, Attention):
            parallelize_module(module, tp_mesh, dict(attention_plan))
        elif isinstance(module, Block):
            plan = {"up": ColwiseParallel(), "down": RowwiseParallel()}
            if isinstance(module.ffn, GatedMLP):
                plan["gate"] = ColwiseParallel()
            parallelize_module(module.ffn, tp_mesh, plan)
        elif isinstance(module, Stack):
            position = module.position
            if isinstance(position, ALiBi):
                # Fixed slopes (a buffer, no gradient): keep this rank's contiguous run of heads,
                # the same run that the column split of q gives it.
                rank = tp_mesh.get_local_rank()
                position.slopes = position.slopes.chunk(tp_mesh.size())[rank].contiguous()
            elif isinstance(position, T5RelativeBias):
                # The table is (buckets, n_heads): a column split gives each rank its heads' columns,
                # and its output (use_local_output) holds just those heads.
                parallelize_module(position, tp_mesh, {"table": ColwiseParallel()})


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

    from llm_modules.nn.transformer import Stack

    for stack in [m for m in model.modules() if isinstance(m, Stack)]:
        for layer in stack.layers:
            fully_shard(layer, mesh=dp_mesh)
    fully_shard(model, mesh=dp_mesh)


def clip_sharded_gradients(trainer, max_norm: float | None, algorithm: str | None) -> bool:
    """Clip to a global gradient norm under FSDP (FSDPStrategy); return whether it was done here.

    FSDP's gradients are local shards of flattened parameters: a norm over them is one rank's
    share, so Lightning's FSDP precision plugin refuses norm clipping altogether, which would make
    the recipe's default ``gradient_clip_val`` fail. FSDP's root module computes the global norm (one
    all-reduce) and scales every shard. Other strategies return False and clip as Lightning does:
    DDP and ModelParallelStrategy (whose DTensor gradients reduce their own norms); DeepSpeed clips
    inside its engine.
    """
    from lightning.pytorch.strategies import FSDPStrategy

    if not max_norm or algorithm not in (None, "norm") or not isinstance(trainer.strategy, FSDPStrategy):
        return False
    trainer.strategy.model.clip_grad_norm_(max_norm)
    return True
