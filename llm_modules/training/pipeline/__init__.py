"""Pipeline parallelism: a single-stack LM cut into consecutive stages, run by ``torch.distributed.pipelining``.

Each of ``pp`` ranks holds one stage (or, for the interleaved and zero-bubble schedules, several):
a run of consecutive blocks; the first stage also owns the token embedding (and what its stack does
before the first block), the last one the final norm and the head and returns logits, on which
the schedule's ``loss_fn`` computes the loss. The kinds: CausalLM and PrefixLM (``DecoderLM``),
MaskedLM (``EncoderLM``); encoder-decoder models, embeddings tied across stages, MoE auxiliary
losses and T5's shared relative bias are refused with the reason (``split.check_pipelinable``).

- ``split``: which models can be cut, into which runs of blocks, and which stages a rank holds;
- ``stage``: the stage modules, cut from the model in place;
- ``schedules``: the schedules by name, and the loss whose micro-batch shares add up exactly;
- ``steps``: a training or validation step, clipping over the stages, data-parallel sharding;
- ``gather``: the whole model's state dict on one rank.

The Lightning side (the strategy with its 3-D mesh, the LightningModule's step) is in
``training.pipeline_strategy`` and ``training.pipeline.runner``.
"""

from llm_modules.training.pipeline.gather import gather_state_dict
from llm_modules.training.pipeline.schedules import (
    SCHEDULES, batch_token_loss, check_schedule, pipeline_schedule, schedule_for, torch_stages, stages_per_rank,
)
from llm_modules.training.pipeline.split import (
    balanced_counts, check_pipelinable, split_blocks, stage_ids,
)
from llm_modules.training.pipeline.stage import LMStage, build_stage, build_stages, prune, stage_from_state
from llm_modules.training.pipeline.steps import (
    clip_grad_norm, eval_step, global_grad_norm, shard_stage, train_step,
)

__all__ = [
    "SCHEDULES", "LMStage", "balanced_counts", "batch_token_loss", "build_stage", "build_stages",
    "check_pipelinable", "check_schedule", "clip_grad_norm", "eval_step", "gather_state_dict",
    "global_grad_norm", "pipeline_schedule", "prune", "schedule_for", "shard_stage", "split_blocks",
    "stage_ids", "stage_from_state", "torch_stages", "train_step", "stages_per_rank",
]
