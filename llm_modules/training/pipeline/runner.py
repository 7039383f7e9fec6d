"""A LightningModule's model run as pipeline stages: what ``configure_model`` builds under the
pipeline strategy, and what the module's loss asks for each batch.

The module's ``model`` is pruned in place to this rank's stages (``stage.prune``), so its
parameters, optimizer and checkpoints are exactly this rank's share under the whole model's
names; the stages are split by tensor parallelism and sharded by FSDP2 over their mesh axes; the
schedule then runs the forward and the backward of a whole batch at once. Lightning's own
backward therefore has nothing left to do (``LanguageModel.backward``), and the loss that the
module logs and its guards judge is the last stage's, sent to every pipeline rank.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from llm_modules.registry import ConfigError
from llm_modules.training.pipeline.schedules import (
    IGNORE_INDEX, check_schedule, schedule_for, stages_per_rank, torch_stages,
)
from llm_modules.training.pipeline.split import check_pipelinable, stage_ids
from llm_modules.training.pipeline.stage import build_stages
from llm_modules.training.pipeline.steps import run_schedule, shard_stage


@dataclass(frozen=True)
class PipelineSettings:
    """The pipeline options of the strategy, as plain data: ranks, schedule, micro-batches per
    step (None: one per stage, ``pp x virtual``), stages per rank (None: the
    schedule's), and an explicit block count per stage (None: balanced by parameters)."""

    size: int
    schedule: str = "1f1b"
    microbatches: int | None = None
    virtual_stages: int | None = None
    blocks: tuple[int, ...] | None = None
    balance: str = "params"


class PipelineRun:
    """This rank's stages of ``lm.model`` and the schedule that runs them (see the module docstring)."""

    def __init__(self, lm, mesh, settings: PipelineSettings, device: torch.device):
        if not lm.pipeline_ready:
            raise ConfigError(
                f"{lm.kind} computes its own loss, which pipeline stages do not; pipeline parallelism trains "
                "CausalLM, PrefixLM and MaskedLM (set trainer.strategy to ddp, fsdp or model-parallel)"
            )
        if lm.evaluation.enabled:
            raise ConfigError(
                "model.evaluation: generation metrics need the whole model on one rank, which pipeline stages "
                "do not have; remove model.evaluation or train without pipeline parallelism"
            )
        if lm.trainer.accumulate_grad_batches != 1:
            raise ConfigError(
                f"trainer.accumulate_grad_batches={lm.trainer.accumulate_grad_batches}: a pipeline step already "
                "accumulates its microbatches; set accumulate_grad_batches: 1 and raise data.batch_size and "
                "trainer.strategy.init_args.microbatches instead"
            )
        pp_mesh, tp_mesh, dp_mesh = mesh["pipeline_parallel"], mesh["tensor_parallel"], mesh["data_parallel"]
        pp, rank = pp_mesh.size(), pp_mesh.get_local_rank()
        virtual = stages_per_rank(settings.schedule, settings.virtual_stages)
        self.microbatches = settings.microbatches or pp * virtual
        check_schedule(settings.schedule, self.microbatches, pp, virtual)
        stages = pp * virtual
        check_pipelinable(lm.model, stages)
        held = stage_ids(rank, pp, virtual)
        seq_len = getattr(lm._datamodule(), "seq_len", None)  # the FLOPs balance's attention term
        self.stages = build_stages(lm.model, held, stages, settings.blocks, settings.balance, seq_len)
        if tp_mesh.size() > 1:
            from llm_modules.training.parallel import apply_tensor_parallel, check_tensor_parallel, replicate_the_rest

            check_tensor_parallel(lm.model, tp_mesh.size())
            apply_tensor_parallel(lm.model, tp_mesh)
            replicate_the_rest(lm.model, tp_mesh)
        for stage in self.stages:
            shard_stage(stage, dp_mesh)
        self.group, self.dp_group = pp_mesh.get_group(), dp_mesh.get_group()
        self.holds_last = any(s.is_last for s in self.stages)
        self.last_rank = (stages - 1) % pp  # the rank holding the last stage
        self.schedule = schedule_for(torch_stages(self.stages, device, self.group), settings.schedule,
                                     self.microbatches)

    def compute_loss(self, lm, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """What ``LanguageModel.compute_loss`` returns, for this batch run through the schedule:
        forward and backward when gradients are on (training), forward only otherwise. Every
        pipeline rank gets the loss; ``tokens`` counts this rank's batch's targets."""
        input_ids, targets, inputs = lm.pipeline_batch(batch)
        tokens = (targets != IGNORE_INDEX).sum()
        short = -input_ids.shape[0] % self.microbatches
        if short:  # the micro-batches must be equal: rows without targets fill the last ones
            input_ids, targets, inputs = padded_rows(short, input_ids, targets, inputs)
        step = self.schedule.eval
        if torch.is_grad_enabled():
            step = self.schedule.step
            for param in lm.parameters():  # LanguageModel.optimizer_zero_grad left them for here
                param.grad = None
        loss = run_schedule(step, self.stages, input_ids, targets, inputs, self.dp_group)
        if loss is None:
            loss = torch.zeros((), device=input_ids.device)
        loss = loss.float()
        dist.broadcast(loss, group=self.group, group_src=self.last_rank)
        return {"loss": loss, "lm_loss": loss, "tokens": tokens}


#: what fills each input of a row added to even out the micro-batches: a valid row (a real token,
#: a one-token prefix, one document), so every computation stays finite, and no target
_FILL = {"attention_mask": 1, "prefix_lengths": 1, "token_type_ids": 0, "document_ids": 0}


def padded_rows(count: int, input_ids: torch.Tensor, targets: torch.Tensor, inputs: dict):
    """The batch with ``count`` more rows that take no loss (targets all ignored), so that it splits
    into equal micro-batches, which the schedules need. A row only attends to itself, so the added
    rows change neither the loss nor any gradient (their positions add exact zeros)."""

    def grow(tensor: torch.Tensor, fill) -> torch.Tensor:
        extra = torch.full((count, *tensor.shape[1:]), fill, dtype=tensor.dtype, device=tensor.device)
        return torch.cat([tensor, extra])

    inputs = {name: None if value is None else grow(value, _FILL[name]) for name, value in inputs.items()}
    return grow(input_ids, 0), grow(targets, IGNORE_INDEX), inputs

