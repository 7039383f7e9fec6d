"""Pipeline parallelism: a single-stack LM cut into consecutive stages, run by ``torch.distributed.pipelining``.

Each of ``pp`` ranks holds one stage: a run of consecutive blocks; the first stage also owns the
token embedding (and what its stack does before the first block: absolute positions, embedding
norm), the last one the final norm and the head and returns logits, on which the schedule's
``loss_fn`` computes the loss. Between stages only hidden states (B, T, D) travel, so a stage is a
pure function of them and of what every stage is given with them (``attention_mask``,
``prefix_lengths``, ``document_ids``: each rank passes its batch's to the schedule, which cuts them into the same
micro-batches): it rebuilds the self-attention mask and positions itself
(``nn.mask_inputs.self_attention_mask``). The kinds: CausalLM and PrefixLM (``DecoderLM``),
MaskedLM (``EncoderLM``).

The loss of each micro-batch is its summed token loss divided by the token count of the whole
batch, so the micro-batches' losses add up to the batch's mean token loss, exactly as one process
computes it, however the targets fall into micro-batches (``batch_token_loss``).

The schedule (GPipe or 1F1B) is PyTorch's own; this module cuts the model, runs a training step
(gradients clipped across the stages) or a validation step, and gathers the whole model's state
dict. Each stage keeps the parameter names of the whole model (``stack.layers.3...``), so
the stages' state dicts together are the model's.

Not built yet (refused with the reason, see ``check_pipelinable``): embeddings tied to the head
across stages, MoE auxiliary losses, position encodings whose parameters every block reads (T5's
relative bias), encoder-decoder models.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

from llm_modules.empty_init import assign, parameters_on_meta
from llm_modules.nn.lm import DecoderLM, EncoderLM, embedded
from llm_modules.nn.loss import cross_entropy
from llm_modules.nn.mask_inputs import MaskInputs, self_attention_mask
from llm_modules.nn.moe import MixtureOfExperts
from llm_modules.nn.positions import NoPosition
from llm_modules.registry import ConfigError

#: targets that take no loss (as ``models.base.IGNORE_INDEX``, which would import Lightning here)
IGNORE_INDEX = -100
#: the schedules a single stage per rank can run, by the name a user gives
SCHEDULES = ("gpipe", "1f1b")


def _numel(module: nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


def check_pipelinable(lm: nn.Module, pp: int) -> None:
    """Refuse, with the reason, a model these stages cannot split into ``pp`` pieces."""
    if pp < 1:
        raise ConfigError(f"pipeline_parallel_size must be at least 1, got {pp}")
    if type(lm) not in (DecoderLM, EncoderLM):
        raise ConfigError(
            f"pipeline parallelism splits single-stack LMs (CausalLM, PrefixLM, MaskedLM) so far, not a "
            f"{type(lm).__name__} (an encoder-decoder's two stacks are not split yet); use pipeline_parallel_size: 1"
        )
    if pp == 1:
        return
    n_layers = len(lm.stack.layers)
    if pp > n_layers:
        raise ConfigError(
            f"pipeline_parallel_size {pp} is more than the model's {n_layers} blocks: each stage needs at least one"
        )
    if lm.config.tie_embeddings:
        raise ConfigError(
            "tie_embeddings: the head would share its weight with the embedding on another pipeline stage, "
            "and keeping the two copies equal is not built yet; set tie_embeddings: false or "
            "pipeline_parallel_size: 1"
        )
    if any(isinstance(m, MixtureOfExperts) for m in lm.modules()):
        raise ConfigError(
            "an MoE layer's auxiliary (load-balancing) loss arises on every pipeline stage, and only the "
            "last stage's loss is back-propagated so far; use a dense activation or pipeline_parallel_size: 1"
        )
    position = lm.stack.position
    if _numel(position) and not (position.embeds and not position.rotates_qk and not position.adds_score_bias):
        raise ConfigError(
            f"position {type(position).__name__} has parameters that every block reads, which pipeline stages "
            "cannot share yet; use position rope, alibi or learned, or pipeline_parallel_size: 1"
        )


def split_blocks(lm: DecoderLM | EncoderLM, pp: int, blocks: Sequence[int] | None = None) -> list[range]:
    """Each stage's blocks (consecutive ranges covering the stack in order).

    ``blocks``: how many blocks each stage gets; by default the split that makes the largest
    stage, counted in parameters, as small as it can be (the first stage counts the embedding
    too, the last the final norm and the head), each stage at least one block.
    """
    check_pipelinable(lm, pp)
    n_layers = len(lm.stack.layers)
    if blocks is not None:
        blocks = [int(b) for b in blocks]
        if len(blocks) != pp or sum(blocks) != n_layers or min(blocks) < 1:
            raise ConfigError(
                f"pipeline blocks {blocks} must list {pp} counts (one per stage), each at least 1, adding up to "
                f"the model's {n_layers} blocks"
            )
        return _ranges(blocks)
    cost = [_numel(layer) for layer in lm.stack.layers]
    first = _numel(lm.embed) + _numel(lm.stack.embedding_norm) + _numel(lm.stack.position)
    last = _numel(lm.stack.final_norm) + _numel(lm.head)
    return _ranges(_balanced(cost, pp, first, last))


def _balanced(cost: list[int], pp: int, first: int, last: int) -> list[int]:
    """Block counts per stage minimizing the largest stage's cost (dynamic programming over cut points)."""
    n = len(cost)
    prefix = [0]
    for c in cost:
        prefix.append(prefix[-1] + c)

    def stage_cost(s: int, a: int, b: int) -> int:  # stage s holding blocks a..b-1
        return prefix[b] - prefix[a] + (first if s == 0 else 0) + (last if s == pp - 1 else 0)

    # best[s][b]: the smallest largest cost of stages 0..s holding blocks 0..b-1, and where stage s starts
    best = [[(float("inf"), 0)] * (n + 1) for _ in range(pp)]
    for b in range(1, n + 1):
        best[0][b] = (stage_cost(0, 0, b), 0)
    for s in range(1, pp):
        for b in range(s + 1, n + 1):
            best[s][b] = min((max(best[s - 1][a][0], stage_cost(s, a, b)), a) for a in range(s, b))
    counts, b = [], n
    for s in range(pp - 1, -1, -1):
        a = best[s][b][1]
        counts.append(b - a)
        b = a
    return counts[::-1]


def _ranges(counts: list[int]) -> list[range]:
    starts = [sum(counts[:i]) for i in range(len(counts))]
    return [range(start, start + count) for start, count in zip(starts, counts)]


class LMStage(nn.Module):
    """One pipeline stage of a ``DecoderLM`` or ``EncoderLM``: token ids (first stage) or hidden
    states (B, T, D) in, hidden states or, on the last stage, logits (B, T, V) out.

    Built by taking the model apart in place: the blocks of other stages are replaced by
    parameter-free placeholders (so the remaining ones keep their numbers and names), the
    embedding side stays on the first stage, the final norm and head on the last.
    """

    def __init__(self, lm: DecoderLM | EncoderLM, index: int, blocks: Sequence[range]):
        super().__init__()
        self.config, self.causal = lm.config, lm.causal
        self.index, self.num_stages, self.blocks = index, len(blocks), blocks[index]
        self.is_first, self.is_last = index == 0, index == len(blocks) - 1
        stack = lm.stack
        for i in range(len(stack.layers)):
            if i not in self.blocks:
                stack.layers[i] = nn.Identity()
        if not self.is_first:
            stack.embedding_norm = None
            if _numel(stack.position):  # embed-only (check_pipelinable): the first stage adds it
                stand_in = NoPosition()
                stand_in.max_len = stack.position.max_len  # sequence-length checks stay on every stage
                stack.position = stand_in
        if not self.is_last:
            stack.final_norm = nn.Identity()
        self.embed = lm.embed if self.is_first else None
        self.stack = stack
        self.head = lm.head if self.is_last else None

    def forward(
        self, x: torch.Tensor, attention_mask=None, prefix_lengths=None, token_type_ids=None, document_ids=None,
    ) -> torch.Tensor:
        """``attention_mask`` (1 = real token), ``prefix_lengths`` and ``document_ids`` (packed
        documents) as the whole model takes them, given to every stage; ``token_type_ids`` are read
        by the first stage only."""
        if self.is_first:
            x = embedded(self.embed, x, None, token_type_ids)
        inputs = MaskInputs(self.causal, attention_mask, prefix_lengths, document_ids=document_ids)
        mask, positions = self_attention_mask(self.config, inputs, x)
        if self.is_first:
            x = self.stack.enter(x, positions)
        x = self.stack.run_blocks(x, mask, positions, self.blocks)
        return self.head(self.stack.final_norm(x)) if self.is_last else x


def build_stage(
    lm: DecoderLM | EncoderLM, index: int, pp: int, blocks: Sequence[int] | None = None,
) -> LMStage:
    """Stage ``index`` of ``pp`` cut from ``lm`` (which it takes apart; build the model once per rank)."""
    if not 0 <= index < pp:
        raise ValueError(f"stage index {index} is outside 0..{pp - 1}")
    return LMStage(lm, index, split_blocks(lm, pp, blocks))


def stage_from_state(
    make_model: Callable[[], DecoderLM | EncoderLM], index: int, pp: int, state: Mapping[str, torch.Tensor],
    blocks: Sequence[int] | None = None, where: str = "the checkpoint",
) -> LMStage:
    """Stage ``index`` of ``pp`` holding only its own weights: ``make_model`` builds the model with
    its parameters on the meta device (no memory, no init work, ``empty_init``), the stage is cut
    from it, and given its own tensors from ``state`` (the whole model's state dict, such as
    ``gather_state_dict`` makes; a mapping that reads tensors on demand keeps the others unread).
    A tensor missing from ``state`` is a ConfigError naming ``where``."""
    with parameters_on_meta():
        lm = make_model()
    stage = build_stage(lm, index, pp, blocks)
    wanted = stage.state_dict().keys()
    assign(stage, {name: state[name] for name in wanted if name in state}, where)
    return stage


def batch_token_loss(logits: torch.Tensor, targets: torch.Tensor, tokens: int) -> torch.Tensor:
    """A micro-batch's share of the batch's mean token cross-entropy: its summed token loss over
    ``tokens``, the number of targets in the whole batch (``train_step`` passes it). The shares add
    up to the batch's mean, so the schedule must not average them again (``scale_grads=False``); a
    mean per micro-batch would weigh a micro-batch with few targets (a short answer, few masked
    tokens) as much as one with many."""
    count = (targets != IGNORE_INDEX).sum()
    if not count:  # no target in this micro-batch: a zero that still reaches every logit
        return logits.sum() * 0.0
    return cross_entropy(logits, targets, IGNORE_INDEX) * (count / tokens)


def check_schedule(schedule: str, microbatches: int, pp: int) -> None:
    """Refuse a schedule name or micro-batch count that cannot run ``pp`` stages."""
    if schedule not in SCHEDULES:
        raise ConfigError(f"pipeline schedule {schedule!r} is not one of {', '.join(SCHEDULES)}")
    if microbatches < 1:
        raise ConfigError(f"pipeline microbatches must be at least 1, got {microbatches}")
    if schedule == "1f1b" and microbatches < pp:
        raise ConfigError(
            f"schedule 1f1b needs at least as many microbatches as stages ({pp}), got {microbatches}; "
            f"raise microbatches to {pp} or use schedule gpipe"
        )


def torch_stage(stage: LMStage, device: torch.device | str = "cpu", group=None):
    """``stage`` as ``torch.distributed.pipelining`` runs it on this rank (``group``: the pipeline's
    process group, the default one when None)."""
    from torch.distributed.pipelining import PipelineStage

    return PipelineStage(stage, stage.index, stage.num_stages, torch.device(device), group=group)


def schedule_for(stage, schedule: str, microbatches: int):
    """The ``torch.distributed.pipelining`` schedule ``schedule`` over a ``torch_stage``, with
    ``microbatches`` micro-batches per step and ``batch_token_loss`` as its ``loss_fn``."""
    from torch.distributed.pipelining import Schedule1F1B, ScheduleGPipe

    check_schedule(schedule, microbatches, stage.num_stages)
    kinds = {"gpipe": ScheduleGPipe, "1f1b": Schedule1F1B}
    return kinds[schedule](stage, n_microbatches=microbatches, loss_fn=batch_token_loss, scale_grads=False)


def pipeline_schedule(
    stage: LMStage, schedule: str, microbatches: int, device: torch.device | str = "cpu", group=None,
):
    """``schedule_for(torch_stage(stage, device, group), schedule, microbatches)``: what a rank runs."""
    return schedule_for(torch_stage(stage, device, group), schedule, microbatches)


def clip_grad_norm(stage: nn.Module, max_norm: float, group=None) -> torch.Tensor:
    """Clip the gradients of the whole pipelined model to ``max_norm``, as ``clip_grad_norm_`` does
    on one process: the norm is over every stage's gradients (each stage's squared 2-norm summed
    over the pipeline ``group``), and every stage scales its own by the same factor. Returns that
    norm (the same on every stage)."""
    import torch.distributed as dist

    params = [p for p in stage.parameters() if p.grad is not None]
    local = torch.nn.utils.get_total_norm([p.grad for p in params]) if params else torch.zeros(())
    squared = local.double().pow(2)
    dist.all_reduce(squared, group=group)
    total = squared.sqrt().to(local.dtype)
    torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
    return total


def shard_stage(stage: LMStage, dp_mesh) -> LMStage:
    """Shard ``stage`` over the data-parallel ``dp_mesh`` (FSDP2 ``fully_shard``, the stage as one
    unit; parameters kept gathered between forward and backward, as pipelining runs several
    micro-batches' forwards before their backwards). FSDP2 averages gradients over the replicas,
    which ``train_step(dp_group=...)`` counts on."""
    from torch.distributed.fsdp import fully_shard

    fully_shard(stage, mesh=dp_mesh, reshard_after_forward=False)
    return stage


def train_step(
    schedule, stage: LMStage, optimizer: torch.optim.Optimizer, input_ids, targets, *,
    max_grad_norm: float | None = None, group=None, dp_group=None, **inputs,
) -> torch.Tensor | None:
    """One optimizer step over a whole batch, which every rank of the pipeline passes whole
    (``inputs``: the batch's ``attention_mask``, ``prefix_lengths``, ``token_type_ids``,
    ``document_ids``), cut into the schedule's micro-batches; with ``max_grad_norm``, gradients
    clipped across the stages of the pipeline ``group`` first (``clip_grad_norm``).

    ``dp_group``: this stage's data-parallel replicas (``shard_stage``), each given its own part
    of the global batch; the loss is then normalized by the global batch's target count, so the
    step is one process's over the global batch. Returns the batch's mean token loss on the last
    stage (the global batch's with ``dp_group``), None elsewhere."""
    if max_grad_norm is not None and dp_group is not None:
        raise ConfigError("gradient clipping with pipeline and data parallelism together is not built yet")
    optimizer.zero_grad(set_to_none=True)
    loss = _run(schedule.step, stage, input_ids, targets, inputs, dp_group)
    if max_grad_norm is not None:
        clip_grad_norm(stage, max_grad_norm, group)
    optimizer.step()
    return loss


@torch.no_grad()
def eval_step(schedule, stage: LMStage, input_ids, targets, dp_group=None, **inputs) -> torch.Tensor | None:
    """The batch's mean token loss without gradients (validation): forward chunks only, the same
    micro-batches and loss as ``train_step``; on the last stage, None elsewhere."""
    return _run(schedule.eval, stage, input_ids, targets, inputs, dp_group)


def _run(step, stage: LMStage, input_ids, targets, inputs: dict, dp_group=None) -> torch.Tensor | None:
    """``schedule.step`` or ``schedule.eval`` over the batch; the last stage's summed shares.

    With data-parallel replicas, each micro-batch's share is over the global target count divided
    by the replicas (FSDP2 averages the gradients: the average of the replicas' sums is then the
    global mean's gradient), and the replicas' losses are summed and divided the same way."""
    import torch.distributed as dist

    count = (targets != IGNORE_INDEX).sum()
    replicas = 1
    if dp_group is not None:
        dist.all_reduce(count, group=dp_group)
        replicas = dist.get_world_size(dp_group)
    tokens = {"tokens": count.item() / replicas}
    inputs = {name: value for name, value in inputs.items() if value is not None}
    losses: list[torch.Tensor] = []
    first = (input_ids,) if stage.is_first else ()
    step(*first, target=targets, losses=losses, loss_kwargs=tokens, **inputs)
    if not stage.is_last:
        return None
    loss = torch.stack([loss.detach() for loss in losses]).sum()
    if dp_group is not None:  # every rank of a dp group holds the same stage: the last stages add up
        dist.all_reduce(loss, group=dp_group)
        loss = loss / replicas
    return loss


def gather_state_dict(stage: nn.Module, group=None, dst: int = 0) -> dict[str, torch.Tensor] | None:
    """The whole model's state dict on pipeline rank ``dst`` of ``group`` (None on the others):
    every stage's tensors under the model's own names, so it loads into the unsplit model. Each
    stage sends a JSON header (names, shapes, dtypes) and then its tensors: nothing is pickled.
    A tensor that several stages hold (a buffer) is taken once."""
    import json

    import torch.distributed as dist

    own = {name: value.detach().contiguous() for name, value in stage.state_dict().items()}
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    if rank != dst:
        header = json.dumps([[name, list(v.shape), str(v.dtype).removeprefix("torch.")] for name, v in own.items()])
        data = torch.frombuffer(bytearray(header.encode()), dtype=torch.uint8)
        dist.send(torch.tensor([data.numel()]), group=group, group_dst=dst)
        dist.send(data, group=group, group_dst=dst)
        for value in own.values():
            dist.send(value, group=group, group_dst=dst)
        return None
    full = dict(own)
    for src in (r for r in range(world) if r != dst):
        size = torch.zeros(1, dtype=torch.long)
        dist.recv(size, group=group, group_src=src)
        data = torch.empty(int(size), dtype=torch.uint8)
        dist.recv(data, group=group, group_src=src)
        for name, shape, dtype in json.loads(bytes(data.tolist()).decode()):
            value = torch.empty(shape, dtype=getattr(torch, dtype))
            dist.recv(value, group=group, group_src=src)
            full.setdefault(name, value)
    return full
