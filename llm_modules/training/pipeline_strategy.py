"""The pipeline strategy: Lightning's ModelParallelStrategy with a third mesh axis for pipeline stages.

The device mesh is ``(data_parallel, pipeline_parallel, tensor_parallel)``: tensor parallelism
innermost (the ranks of one node, on its fast links), pipeline stages next (their traffic is only
the activations at stage boundaries, so they may cross nodes), data parallelism / FSDP2 outermost.
The strategy carries the pipeline options as plain data (``pipeline``, a ``PipelineSettings``);
``LanguageModel.configure_model`` cuts the model into this rank's stages with them
(``training.pipeline.runner``). Everything else is ModelParallelStrategy's: the data is split over
the data-parallel axis only, and checkpoints are distributed folders (one file per rank, resumed
exactly) unless ``save_distributed_checkpoint: false``, which here writes one consolidated file of
the whole model's weights, the format ``load_checkpoint``, ``convert`` and ``export`` read.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

from lightning.fabric.plugins.collectives.torch_collective import default_pg_timeout
from lightning.pytorch.strategies import ModelParallelStrategy, ParallelStrategy

from llm_modules.registry import ConfigError
from llm_modules.training.pipeline.runner import PipelineSettings
from llm_modules.training.pipeline.schedules import SCHEDULES, stages_per_rank

#: the schedules' names, for the CLI's checks and help
ScheduleName = Literal[tuple(SCHEDULES)]
#: the mesh's axes, outermost first
AXES = ("data_parallel", "pipeline_parallel", "tensor_parallel")


def _flat_options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(flatten_optimizer_state_dict=True, cpu_offload=True)


class PipelineParallelStrategy(ModelParallelStrategy):
    """Pipeline stages, combined with data parallelism (FSDP2) and tensor parallelism.

    Args:
        pipeline_parallel_size: pipeline ranks; ``auto``: the processes left over by the other two.
        data_parallel_size: replicas, each FSDP2-sharding its stages; ``auto``: what is left
            (1 when ``pipeline_parallel_size`` is ``auto`` too).
        tensor_parallel_size: ranks splitting each block (heads, hidden units); 1 by default.
        schedule: ``gpipe``, ``1f1b``, ``interleaved-1f1b`` or ``interleaved-zero-bubble``
            (PyTorch's schedules).
        microbatches: micro-batches per optimizer step (default: one per stage); a batch whose
            rows they do not divide is filled with rows without targets.
        virtual_stages: stages per rank for the interleaved schedules (default 2).
        blocks: blocks per stage, in order (default: balanced).
        balance: what the default split evens out: ``params`` (memory: the embedding counts on the
            first stage) or ``flops`` (time: the embedding lookup is free, the head's matmul is not).
        save_distributed_checkpoint: True: a folder with one file per rank (exact resume); False:
            one file with the whole model's weights (no optimizer state).
    """

    def __init__(
        self,
        pipeline_parallel_size: int | Literal["auto"] = "auto",
        data_parallel_size: int | Literal["auto"] = "auto",
        tensor_parallel_size: int = 1,
        schedule: ScheduleName = "1f1b",
        microbatches: int | None = None,
        virtual_stages: int | None = None,
        blocks: list[int] | None = None,
        balance: Literal["params", "flops"] = "params",
        save_distributed_checkpoint: bool = True,
        process_group_backend: str | None = None,
        timeout: timedelta | None = default_pg_timeout,
    ) -> None:
        super().__init__(
            data_parallel_size=data_parallel_size, tensor_parallel_size=tensor_parallel_size,
            save_distributed_checkpoint=save_distributed_checkpoint, process_group_backend=process_group_backend,
            timeout=timeout,
        )
        self._pipeline_parallel_size = pipeline_parallel_size
        self._pipeline_options = dict(
            schedule=schedule, microbatches=microbatches, virtual_stages=virtual_stages,
            blocks=tuple(blocks) if blocks is not None else None, balance=balance,
        )
        #: the pipeline options (``PipelineSettings``), once the sizes are known (``setup_environment``)
        self.pipeline: PipelineSettings | None = None

    def _configure_launcher(self) -> None:
        """Check the sizes before any process is started, so that a mismatch is said once."""
        self.check_options()
        super()._configure_launcher()

    def check_options(self, world: int | None = None) -> None:
        """Refuse sizes that do not fit ``world`` processes (default: devices x nodes) and a
        ``virtual_stages`` the schedule cannot run, in one line each."""
        options = self._pipeline_options
        stages_per_rank(options["schedule"], options["virtual_stages"])
        mesh_sizes(self._data_parallel_size, self._pipeline_parallel_size, self._tensor_parallel_size,
                   world or self.num_nodes * self.num_processes)

    def setup_environment(self) -> None:
        """ModelParallelStrategy's set-up with a 3-D mesh (see the module docstring)."""
        from torch.distributed.device_mesh import init_device_mesh

        ParallelStrategy.setup_environment(self)
        self._setup_distributed()
        dp, pp, tp = mesh_sizes(self._data_parallel_size, self._pipeline_parallel_size,
                                self._tensor_parallel_size, self.world_size)
        self._data_parallel_size, self._pipeline_parallel_size, self._tensor_parallel_size = dp, pp, tp
        self._device_mesh = init_device_mesh(self.root_device.type, (dp, pp, tp), mesh_dim_names=AXES)
        self.lightning_module._device_mesh = self._device_mesh
        self.pipeline = PipelineSettings(size=pp, **self._pipeline_options)

    # ---- one consolidated file (save_distributed_checkpoint: false) ---------------------------------------------

    def lightning_module_state_dict(self) -> dict[str, Any]:
        """The whole model's weights on global rank 0 (empty elsewhere) when checkpoints are one
        file: each stage's full tensors (gathered over its data/tensor-parallel shards), sent to
        rank 0 over the pipeline (``gather_state_dict``, nothing pickled)."""
        if self._save_distributed_checkpoint:
            return super().lightning_module_state_dict()
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        from llm_modules.training.pipeline.gather import gather_state_dict

        full = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=False))
        mesh = self.device_mesh
        if mesh["data_parallel"].get_local_rank() or mesh["tensor_parallel"].get_local_rank():
            return {}
        full = {name: value.cpu() for name, value in full.items()}
        return gather_state_dict(full, group=mesh["pipeline_parallel"].get_group()) or {}

    def optimizer_state(self, optimizer) -> dict[str, Any]:
        """Distributed: keyed per parameter, hyper-parameters included (``flatten_optimizer_state_dict``).
        Lightning's nested form keeps ``param_groups`` as one entry that the distributed checkpoint
        writes once, from rank 0, and every rank would read back rank 0's groups, which name other
        parameters than its stages'. Consolidated: none (see ``save_checkpoint``)."""
        if not self._save_distributed_checkpoint:
            return {}
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        optimizer = getattr(optimizer, "_optimizer", optimizer)  # a LightningOptimizer's own
        return get_optimizer_state_dict(self.model, optimizer, options=_flat_options())

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath, storage_options: Any | None = None) -> None:
        """A consolidated file holds the weights, not the optimizer: its states are per stage and
        only a distributed checkpoint folder resumes a pipeline run."""
        if not self._save_distributed_checkpoint:
            checkpoint.pop("optimizer_states", None)
            checkpoint.pop("lr_schedulers", None)
        super().save_checkpoint(checkpoint, filepath, storage_options)

    def load_checkpoint(self, checkpoint_path, weights_only: bool | None = None) -> dict[str, Any]:
        """Resume from a distributed checkpoint folder: the model's entries and the other state as
        ModelParallelStrategy reads them, the optimizers in the per-parameter form they were saved in."""
        from lightning.fabric.strategies.model_parallel import _distributed_checkpoint_load, _load_checkpoint
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

        path = Path(self.broadcast(checkpoint_path))
        if path.is_file():
            raise ConfigError(
                f"--ckpt_path {str(path)!r} is a single file; a pipeline run resumes from a distributed "
                "checkpoint folder (trainer.strategy.init_args.save_distributed_checkpoint: true); to start "
                "from this file's weights, set model.init_from to it"
            )
        metadata = _load_checkpoint(path, {"state_dict": self.model}, strict=self.lightning_module.strict_loading,
                                    weights_only=weights_only)
        for index, optimizer in enumerate(self.optimizers):
            key = f"optimizer_{index}"
            state = {key: get_optimizer_state_dict(self.model, optimizer, options=_flat_options())}
            _distributed_checkpoint_load(state, path)
            set_optimizer_state_dict(self.model, optimizer, optim_state_dict=state[key], options=_flat_options())
        return metadata


def mesh_sizes(dp, pp, tp, world: int) -> tuple[int, int, int]:
    """(data, pipeline, tensor) sizes whose product is ``world``, ``auto`` ones filled in."""
    if not isinstance(tp, int) or tp < 1:
        raise ConfigError(f"trainer.strategy.init_args.tensor_parallel_size must be a positive integer, got {tp!r}")
    for name, size in (("pipeline_parallel_size", pp), ("data_parallel_size", dp)):
        if size != "auto" and (not isinstance(size, int) or size < 1):
            raise ConfigError(f"trainer.strategy.init_args.{name} must be a positive integer or auto, got {size!r}")
    known = [(name, size) for name, size in (("data_parallel_size", dp), ("pipeline_parallel_size", pp),
                                             ("tensor_parallel_size", tp)) if size != "auto"]
    product = 1
    for _, size in known:
        product *= size
    if world % product:
        sizes = " x ".join(f"{name} {size}" for name, size in known)
        raise ConfigError(
            f"trainer.strategy.init_args: {sizes} does not divide the {world} processes (trainer.devices x "
            "trainer.num_nodes); change the sizes or the devices"
        )
    if pp == "auto":
        dp = 1 if dp == "auto" else dp
        pp = world // (dp * tp)
    elif dp == "auto":
        dp = world // (pp * tp)
    if dp * pp * tp != world:
        raise ConfigError(
            f"trainer.strategy.init_args: data_parallel_size {dp} x pipeline_parallel_size {pp} x tensor_parallel_size "
            f"{tp} must equal the {world} processes (trainer.devices x trainer.num_nodes); change the sizes or the devices"
        )
    return dp, pp, tp
