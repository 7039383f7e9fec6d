"""Test-only pieces that the strategy tests load into their training subprocesses (PYTHONPATH=tests).

``Probe`` records, once the strategy has wrapped the model, what each rank actually holds: FSDP units,
activation-checkpoint wrappers, DTensor placements, DeepSpeed partitions. ``CPUDeepSpeedStrategy``
lifts the two CUDA-only checks of Lightning's DeepSpeedStrategy, so that ZeRO runs on CPU processes
over gloo with DeepSpeed's CPU accelerator, and skips building that accelerator's inference-only
all-reduce kernel; nothing else of DeepSpeed's or Lightning's path changes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lightning.fabric.utilities.seed import reset_seed
from lightning.pytorch import Callback
from lightning.pytorch.strategies import DeepSpeedStrategy
from lightning.pytorch.strategies.ddp import DDPStrategy


class CPUDeepSpeedStrategy(DeepSpeedStrategy):
    """DeepSpeedStrategy without "CUDA only": no accelerator check, no CUDA device-index check, and a
    device rank for DeepSpeed's engine taken from the local rank (a CPU device has no index)."""

    def setup_environment(self) -> None:
        DDPStrategy.setup_environment(self)  # skips DeepSpeedStrategy's CUDAAccelerator check

    def setup_distributed(self) -> None:
        import importlib

        # DeepSpeed's CPU accelerator compiles a shared-memory all-reduce kernel when its comm backend
        # starts (about 50 s of CPU where ~/.cache/torch_extensions is cold, as on a fresh CI machine);
        # only ``inference_all_reduce`` uses it, training all-reduces over gloo either way.
        # (``import deepspeed.comm.torch as m`` would give the torch package that deepspeed.comm imports)
        importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
        reset_seed()
        self.set_world_ranks()
        self._init_deepspeed_distributed()

    def _setup_model_and_optimizer(self, model, optimizer, lr_scheduler=None):
        import deepspeed

        engine, ds_optimizer, _, _ = deepspeed.initialize(
            args=argparse.Namespace(device_rank=self.local_rank), config=self.config, model=model,
            model_parameters=[p for p in model.parameters() if p.requires_grad], optimizer=optimizer,
            lr_scheduler=lr_scheduler, dist_init_required=False,
        )
        return engine, ds_optimizer


class Probe(Callback):
    """At the start of training, write ``<out>/rank<R>.json`` describing this rank's model."""

    def __init__(self, out: str):
        self.out = Path(out)

    def on_train_start(self, trainer, pl_module) -> None:
        from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper
        from torch.distributed.fsdp import FSDPModule, FullyShardedDataParallel
        from torch.distributed.tensor import DTensor

        root = trainer.strategy.model
        info = {"strategy": type(trainer.strategy).__name__, "world_size": trainer.world_size}
        info["fsdp1_units"] = [
            type(_unwrap(m.module)).__name__ for m in root.modules() if isinstance(m, FullyShardedDataParallel)
        ]
        # fully_shard swaps a module's class for a subclass named FSDP<Class>
        info["fsdp2_units"] = [
            type(m).__name__.removeprefix("FSDP") for m in pl_module.modules() if isinstance(m, FSDPModule)
        ]
        info["checkpointed"] = [
            type(m._checkpoint_wrapped_module).__name__ for m in root.modules() if isinstance(m, CheckpointWrapper)
        ]
        params = dict(pl_module.named_parameters())
        info["local_numel"] = sum(_local(p).numel() for p in params.values())
        info["parameters"] = len(params)
        info["placements"] = {
            name: [repr(x) for x in p.placements] for name, p in params.items() if isinstance(p, DTensor)
        }
        info["mesh"] = {
            name: list(p.device_mesh.mesh_dim_names or ()) for name, p in params.items() if isinstance(p, DTensor)
        }
        if any(hasattr(p, "ds_id") for p in params.values()):
            info["deepspeed"] = {
                "all_have_ds_id": all(hasattr(p, "ds_id") for p in params.values()),
                "status": sorted({str(p.ds_status) for p in params.values()}),
                "full_numel": sum(p.ds_numel for p in params.values()),
                "partition_numel": sum(p.ds_tensor.numel() for p in params.values()),
                "visible_numel": sum(p.numel() for p in params.values()),
            }
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / f"rank{trainer.global_rank}.json").write_text(json.dumps(info, indent=1))


def _unwrap(module):
    return getattr(module, "_checkpoint_wrapped_module", module)


def _local(p):
    return p.to_local() if hasattr(p, "to_local") else p
