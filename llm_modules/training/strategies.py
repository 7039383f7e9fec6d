"""Lightning strategies with this project's defaults, nameable from YAML and from ``--trainer.strategy``.

Lightning's ``FSDPStrategy`` needs ``auto_wrap_policy`` and ``activation_checkpointing_policy`` as sets
of module classes, which a YAML file cannot spell; without them FSDP makes the whole model one unit,
so every parameter is gathered at once and sharding saves no memory at the peak. ``BlockFSDPStrategy``
fixes both to our transformer ``Block``, so the presets under ``configs/strategies/`` name it by class
path, and ``--trainer.strategy fsdp`` means the same (see ``register_strategy_names``).

Everything else (DDP, DeepSpeed ZeRO, ModelParallelStrategy) is Lightning's own class, configured in
the preset YAML; the tensor-parallel plan for ModelParallelStrategy is in ``training/parallel.py``.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Literal

from lightning.fabric.plugins.collectives.torch_collective import default_pg_timeout
from lightning.pytorch.strategies import FSDPStrategy, StrategyRegistry
from torch.nn import Module

from llm_modules.nn.transformer import Block


class BlockFSDPStrategy(FSDPStrategy):
    """FSDP with each transformer block its own shard unit and (by default) checkpointed.

    Per block, the full weights exist only while that block runs (forward, and again in backward);
    activation checkpointing keeps only each block's input for the backward pass. The root unit holds
    the embeddings, final norm and head.

    ``state_dict_type``: ``sharded`` (default) writes a checkpoint folder with one file per rank and
    never assembles the model on one process, which is what makes large models checkpointable;
    ``full`` gathers weights and optimizer state on rank 0 into one ``.ckpt`` file, the format a
    one-device run writes (not checked here against ``llm-modules convert``).
    ``activation_checkpointing``: False keeps activations (faster, more memory).
    ``sharding_strategy``: FULL_SHARD (ZeRO-3-like), SHARD_GRAD_OP (ZeRO-2-like), NO_SHARD,
    HYBRID_SHARD (shard within a node, replicate across nodes). ``cpu_offload`` keeps parameters
    and gradients on the CPU between uses.

    Lightning refuses FSDP without a GPU only for its own class and names, so this subclass also
    runs on CPU processes over gloo, which is how the tests exercise it.
    """

    def __init__(
        self,
        state_dict_type: Literal["full", "sharded"] = "sharded",
        activation_checkpointing: bool = True,
        sharding_strategy: Literal["FULL_SHARD", "SHARD_GRAD_OP", "NO_SHARD", "HYBRID_SHARD"] = "FULL_SHARD",
        cpu_offload: bool = False,
        process_group_backend: str | None = None,
        timeout: timedelta | None = default_pg_timeout,
    ) -> None:
        super().__init__(
            auto_wrap_policy={Block},
            activation_checkpointing_policy={Block} if activation_checkpointing else None,
            state_dict_type=state_dict_type,
            sharding_strategy=sharding_strategy,
            cpu_offload=cpu_offload,
            process_group_backend=process_group_backend,
            timeout=timeout,
        )

    def _setup_model(self, model: Module) -> Module:
        """Lightning gives FSDP the CUDA device index as ``device_id``, which is None on CPU, and FSDP
        then refuses to run without an accelerator; an explicit CPU device it accepts. So on CPU the
        model is wrapped here, and Lightning's own step only adds activation checkpointing (with the
        policy set aside meanwhile, or Lightning would warn that it is ignored: it was just applied)."""
        from torch.distributed.fsdp import FullyShardedDataParallel

        if self.root_device.type != "cpu" or any(isinstance(m, FullyShardedDataParallel) for m in model.modules()):
            return super()._setup_model(model)
        model = FullyShardedDataParallel(
            module=model, cpu_offload=self.cpu_offload, mixed_precision=self.mixed_precision_config,
            sharding_strategy=self.sharding_strategy, device_id=self.root_device, **self.kwargs,
        )
        policy = self.kwargs.pop("auto_wrap_policy", None)
        try:
            return super()._setup_model(model)
        finally:
            if policy is not None:
                self.kwargs["auto_wrap_policy"] = policy


    def lightning_module_state_dict(self):
        """One-file (``full``) checkpoints on CPU processes: gather without offloading to the CPU.

        Lightning gathers the full state dict with ``offload_to_cpu=True``; when the parameters
        already live on the CPU, FSDP then clones tensors whose memory it has just released and the
        process dies of a segmentation fault while saving (torch 2.13). On a CPU the offload is a
        no-op anyway, so gathering without it writes the same file.
        """
        if self.root_device.type != "cpu" or self._state_dict_type != "full":
            return super().lightning_module_state_dict()
        from torch.distributed.fsdp import FullStateDictConfig, StateDictType
        from torch.distributed.fsdp import FullyShardedDataParallel

        config = FullStateDictConfig(offload_to_cpu=False, rank0_only=True)
        with FullyShardedDataParallel.state_dict_type(self.model, StateDictType.FULL_STATE_DICT, config):
            return self.model.state_dict()


def register_strategy_names() -> None:
    """Make ``--trainer.strategy fsdp`` (and ``fsdp_cpu_offload``) mean block-wrapped FSDP.

    Lightning's own ``fsdp`` wraps nothing inside the model: for our LMs that is one giant unit, a
    setting nobody wants. The names keep Lightning's other defaults (``state_dict_type: full``, one
    checkpoint file; the ``strategies/fsdp`` preset writes sharded folders instead). For a model
    without our ``Block`` both policies match nothing, so for other code the names still mean
    Lightning's plain FSDP. They stay in Lightning's list of FSDP names, so Lightning still
    refuses them without a GPU (the presets name the class, which also runs on CPU). Idempotent.
    """
    StrategyRegistry.register(
        "fsdp", BlockFSDPStrategy, description="FSDP, one unit per transformer block, checkpointed (llm-modules)",
        override=True, state_dict_type="full",
    )
    StrategyRegistry.register(
        "fsdp_cpu_offload", BlockFSDPStrategy, description="Block-wrapped FSDP with parameters offloaded to CPU",
        override=True, state_dict_type="full", cpu_offload=True,
    )


register_strategy_names()
