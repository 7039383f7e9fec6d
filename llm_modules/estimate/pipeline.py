"""Memory per pipeline rank, the bubble, and the step time of a pipelined run (``estimate --pp``).

The batch: ``Setup.batch_size`` rows per data-parallel replica per optimizer step. Every
pipeline rank of a replica receives that whole batch, and the schedule cuts it into
``microbatches`` micro-batches of ``batch_size / microbatches`` rows (as
``training.pipeline.train_step`` does); a batch they do not divide is filled up with rows that
take no loss (``runner.padded_rows``), which cost memory like the others.

The split is the runtime's: ``training.pipeline.split_blocks`` (balanced by parameters or by
training FLOPs, ``Pipeline.balance``) on the model built on the meta device (so the same
refusals: tied embeddings, MoE, encoder-decoder models, more stages than blocks), stage 0 with the embedding, the last stage with the final norm and the head; rank ``r``
holds the stages ``split.stage_ids`` gives it (``schedule_order.held_stages``).

What a rank holds, as ``torch.distributed.pipelining`` runs it (measured against CPU processes
by ``benchmarks/pipeline_memory.py``):

- model states of its stages' parameters (``estimate.memory.state_bytes``), divided over the
  data-parallel size (the strategy is ``fsdp``: the pipeline strategy's replicas shard their
  stages with FSDP2, which keeps them gathered from the forward to the backward: one
  compute-dtype copy of the rank's weights more); gradients exist from the first backward of a
  step (the step starts with ``zero_grad(set_to_none=True)``). With ``tp`` > 1 a block's parameters and activations are
  divided over the tensor-parallel group, except the hidden-state inputs of its two norms, which
  every tensor-parallel rank keeps whole (approximate: the blocks' small replicated parts, norms
  and biases, are divided too); embeddings and the head are replicated (``training.parallel``).
- activations of each micro-batch in flight: a stage's blocks keep what one block keeps for one
  micro-batch (``estimate.activations``, the real modules traced on data-less tensors) times its
  blocks; the first stage what the embedding keeps, the last what the final norm, head and loss
  keep; a stage with a successor keeps its output until its backward (the schedule's cache).
  The order of forwards and backwards is the schedule's own (``estimate.schedule_order``).
- the schedule's receive buffers, allocated at the first step and kept: one hidden state per
  micro-batch for the activations a stage receives, one for the gradients it receives.
- the last stage's outputs: ``Schedule.step`` keeps every micro-batch's logits until the next
  step, and concatenates them at the end of the step, when asked for them
  (``training.pipeline.steps.RETURN_OUTPUTS``; the training step does not ask).
- between a zero-bubble schedule's input pass (``I``) and weight pass (``W``) of a micro-batch:
  its graph, and the gradient of the output of every op that uses a parameter (a linear layer's
  output width, a norm's), which torch keeps to compute the weight gradients from; the first
  stage's ``I`` does nothing and its ``W`` runs the whole backward.
- sent tensors until the schedule waits on their sends (``SENDS_HELD``): the multi-stage
  runtime waits at the end of the step, so every micro-batch's output and input gradient stay
  (not between two stages of the same rank, which hand them over); GPipe waits its backward
  sends after the last backward.

Peak: the largest of the moments of a step on the rank: after each forward, during each backward
(a stage's units, head, blocks from the last, embedding, each allocating its gradients the first
time while its activations still exist, then freeing them), at the end of the schedule (the
concatenated logits) and in the optimizer step (``estimate.memory``'s temporaries).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import lru_cache

from llm_modules.estimate.activations import Activations, Training, estimate_activations
from llm_modules.estimate.memory import PhasePeak, Setup, shards, state_bytes
from llm_modules.estimate.schedule_order import Action, held_stages, in_flight, schedule_order, simulate
from llm_modules.registry import ConfigError
from llm_modules.training.pipeline.steps import RETURN_OUTPUTS as LAST_STAGE_KEEPS_OUTPUTS


@dataclass(frozen=True)
class Pipeline:
    """The pipeline of ``estimate --pp``: ``pp`` ranks, a schedule by its runtime name,
    ``microbatches`` per optimizer step (None: one per stage, ``pp x virtual``, the strategy's
    default), ``virtual`` stages per rank (the schedule's default when None), ``tp``
    tensor-parallel ranks per stage."""

    pp: int
    schedule: str = "1f1b"
    microbatches: int | None = None
    virtual: int | None = None
    tp: int = 1
    #: blocks per stage (``split_blocks``'s explicit split); None: balanced by ``balance``
    blocks: tuple[int, ...] | None = None
    #: what the default split evens out: ``params`` (memory) or ``flops`` (time), as the strategy's option
    balance: str = "params"


@dataclass
class RankMemory(PhasePeak):
    """Bytes on one pipeline rank (per device), by kind, with each moment's total in ``phases``."""

    rank: int
    stages: list[int]
    blocks: list[list[int]]  # each stage's blocks
    parameters: int  # of this rank's stages (per tensor-parallel rank)
    weights: float
    gradients: float
    optimizer: float
    gathered: float
    buffers: float  # receive buffers
    activations: float  # at the peak of activations: the in-flight micro-batches' saved tensors
    kept_outputs: float  # the last stage's logits kept to the end of the step
    in_flight: dict[int, int]  # stage -> most micro-batches in flight
    microbatch_activations: dict[int, float]  # stage -> what one micro-batch keeps there
    phases: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {
            "rank": self.rank, "stages": self.stages, "blocks": self.blocks, "parameters": self.parameters,
            "weights": self.weights, "gradients": self.gradients, "optimizer": self.optimizer,
            "model_states": self.weights + self.gradients + self.optimizer, "gathered": self.gathered,
            "buffers": self.buffers, "activations": self.activations, "kept_outputs": self.kept_outputs,
            "in_flight": {str(k): v for k, v in self.in_flight.items()},
            "microbatch_activations": {str(k): v for k, v in self.microbatch_activations.items()},
            "phases": dict(self.phases), "peak": self.peak, "peak_phase": self.peak_phase,
        }


@dataclass
class PipelineEstimate:
    pipe: Pipeline
    virtual: int
    microbatch_rows: int
    stage_blocks: list[list[int]]
    ranks: list[RankMemory]
    bubble: float  # idle fraction of a step, simulated from the schedule's order
    bubble_formula: float | None  # the closed form, where there is one
    formula: str

    @property
    def peak(self) -> float:
        return max(r.peak for r in self.ranks)

    def as_dict(self) -> dict:
        return {
            "pp": self.pipe.pp, "tp": self.pipe.tp, "schedule": self.pipe.schedule,
            "microbatches": self.pipe.microbatches, "virtual_stages": self.virtual,
            "microbatch_rows": self.microbatch_rows, "stage_blocks": self.stage_blocks,
            "blocks_per_stage": [len(b) for b in self.stage_blocks], "balance": self.pipe.balance,
            "bubble": self.bubble, "bubble_formula": self.bubble_formula, "bubble_formula_text": self.formula,
            "peak": self.peak, "ranks": [r.as_dict() for r in self.ranks],
        }


def bubble_formula(schedule: str, pp: int, microbatches: int, virtual: int) -> tuple[float | None, str]:
    """The closed-form idle fraction of a step: (p-1)/(m+p-1) for GPipe and 1F1B (Huang et al.
    2019), (p-1)/(v m+p-1) for interleaved 1F1B (Narayanan et al. 2021: the bubble, (p-1)/m of
    the compute, divided by v); none for the zero-bubble schedules (simulated only)."""
    p, m, v = pp, microbatches, virtual
    if schedule in ("gpipe", "1f1b"):
        return (p - 1) / (m + p - 1), "(p-1)/(m+p-1)"
    if schedule == "interleaved-1f1b":
        return (p - 1) / (v * m + p - 1), "(p-1)/(v*m+p-1)"
    return None, "simulated from the schedule's order: F = I = W, B = I + W"


def check_pipeline(cfg, kind: str, setup: Setup, pipe: Pipeline) -> int:
    """Refuse what cannot run (one line each); return the stages per rank."""
    from llm_modules.training.pipeline.schedules import check_schedule, stages_per_rank

    for name in ("pp", "microbatches", "tp"):
        value = getattr(pipe, name)
        if value is None and name == "microbatches":
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be a positive integer; got {value!r}")
    try:  # the runtime's refusals: a schedule that cannot run, too many stages, tied embeddings, ...
        virtual = stages_per_rank(pipe.schedule, pipe.virtual)
        virtual = check_schedule(pipe.schedule, pipe.microbatches or pipe.pp * virtual, pipe.pp, virtual)
        stage_blocks(cfg, kind, pipe.pp * virtual, pipe.blocks, pipe.balance, setup.seq_len)
    except ConfigError as err:  # in the command's words
        raise ConfigError(_as_options(str(err))) from None
    if setup.accumulate > 1:
        raise ConfigError("--accumulate with --pp: a pipeline step accumulates its micro-batches' gradients "
                          "already (the strategy refuses accumulate_grad_batches > 1); raise --batch-size and "
                          "--microbatches together instead")
    if setup.strategy != "fsdp":
        raise ConfigError(f"--strategy {setup.strategy} with --pp: the pipeline strategy's data-parallel replicas "
                          "shard their stages with FSDP2; leave --strategy out or give fsdp")
    if setup.activation_checkpointing:
        raise ConfigError("--activation-checkpointing with --pp is not modelled (the pipeline strategy does not "
                          "checkpoint its stages); leave it out")
    heads, kv, ff = cfg.n_heads, cfg.kv_heads, cfg.d_ff
    if pipe.tp > 1 and (heads % pipe.tp or kv % pipe.tp or (ff and ff % pipe.tp)):
        raise ConfigError(f"--tp {pipe.tp} must divide the model's {heads} attention heads, {kv} key/value heads "
                          f"and d_ff {ff} (tensor parallelism splits whole heads and hidden units)")
    return virtual


#: what the layout search asks of one model many times (hundreds of candidates): its splits (or the
#: refusal) by (model, stages, blocks, balance, seq_len), and its ``_StageParts``, each computed once
_SPLITS: dict = {}
_PARTS: dict = {}


def _meta_model(cfg, kind: str):
    """The model on the meta device, built once per config (``params.meta_model``)."""
    from llm_modules.estimate.params import meta_model

    if len(_SPLITS) > 256 or len(_PARTS) > 8:
        _SPLITS.clear()
        _PARTS.clear()
    return meta_model(cfg, kind)


def _as_options(message: str) -> str:
    """A runtime message with the strategy's option names as ``estimate``'s flags."""
    for name, flag in (("pipeline_parallel_size", "--pp"), ("virtual_stages", "--virtual-stages"),
                       ("raise microbatches", "raise --microbatches"), ("pipeline blocks", "--blocks"),
                       ("pipeline balance", "--balance")):
        message = message.replace(name, flag)
    return message.replace("set --virtual-stages:", "set --virtual-stages").replace("--pp:", "--pp")


def stage_blocks(cfg, kind: str, stages: int, blocks=None, balance: str = "params",
                 seq_len: int | None = None) -> list[list[int]]:
    """Each stage's blocks, by the runtime's split (``training.pipeline.split_blocks``; ``blocks``:
    an explicit count per stage; ``balance`` and ``seq_len`` as the strategy passes them)."""
    from llm_modules.estimate.params import model_key
    from llm_modules.training.pipeline.split import split_blocks

    model = _meta_model(cfg, kind)
    key = (model_key(cfg, kind), stages, None if blocks is None else tuple(blocks), balance, seq_len)
    if key not in _SPLITS:  # the runtime's split walks the model's parameters: once per question
        try:
            _SPLITS[key] = [list(r) for r in split_blocks(model, stages, blocks, balance, seq_len)]
        except ConfigError as err:
            _SPLITS[key] = err
    found = _SPLITS[key]
    if isinstance(found, ConfigError):
        raise ConfigError(str(found))
    return [list(r) for r in found]


@dataclass(frozen=True)
class _StageParts:
    """Parameters (elements) of a stage: outside the blocks first/last, and each block."""

    first: int  # embedding, embedding norm, embedded positions (stage 0)
    last: int  # final norm and head (last stage)
    block: list[int]
    #: widths of the outputs of the ops that use parameters (a linear layer's out_features, a
    #: norm's weight), summed per block and over the final norm and head: what a zero-bubble
    #: schedule's input pass keeps of a micro-batch for its weight pass, per token
    block_widths: list[int] = field(default_factory=list)
    last_widths: int = 0


def _widths(module) -> int:
    from torch import nn

    total = 0
    for m in module.modules() if module is not None else ():
        if isinstance(m, nn.Linear):
            total += m.out_features
        elif not isinstance(m, nn.Embedding):  # a norm: one op over its weight (and bias)
            total += max((p.numel() for p in m.parameters(recurse=False) if p.dim() == 1), default=0)
    return total


def _parts(cfg, kind: str) -> _StageParts:
    from llm_modules.estimate.params import model_key
    from llm_modules.training.pipeline.split import numel

    lm = _meta_model(cfg, kind)
    key = model_key(cfg, kind)
    if key not in _PARTS:
        stack = lm.stack
        _PARTS[key] = _StageParts(
            numel(lm.embed) + numel(stack.embedding_norm) + numel(stack.position),
            numel(stack.final_norm) + numel(lm.head), [numel(layer) for layer in stack.layers],
            [_widths(layer) for layer in stack.layers], _widths(stack.final_norm) + _widths(lm.head))
    return _PARTS[key]


def estimate_pipeline(cfg, kind: str, setup: Setup, pipe: Pipeline, *, training: Training | None = None,
                      acts: Activations | None = None) -> PipelineEstimate:
    """Memory of every pipeline rank of ``pipe`` for ``setup`` (module doc), the bubble."""
    from llm_modules.training.pipeline.schedules import SCHEDULES

    setup.check()
    virtual = check_pipeline(cfg, kind, setup, pipe)
    n_stages = pipe.pp * virtual
    pipe = replace(pipe, virtual=virtual, microbatches=pipe.microbatches or n_stages)
    blocks = stage_blocks(cfg, kind, n_stages, pipe.blocks, pipe.balance, setup.seq_len)
    parts = _parts(cfg, kind)
    rows = -(-setup.batch_size // pipe.microbatches)  # a batch they do not divide is filled up (runner.padded_rows)
    b = state_bytes(setup.precision, setup.strategy)
    autocast = setup.precision.endswith("-mixed") and setup.strategy == "ddp"
    if acts is None:
        acts = estimate_activations(
            cfg, kind=kind, precision=setup.precision, params_half=b.compute == 2 and not autocast, batch_size=rows,
            seq_len=setup.seq_len, training=training or Training(), device=setup.device)
    n_layers = len(parts.block)
    tp, dp = pipe.tp, setup.devices
    hidden = acts.block_inputs / n_layers  # one block's input: a micro-batch's hidden state
    per_block = (acts.blocks / n_layers - 2 * hidden) / tp + 2 * hidden if tp > 1 else acts.blocks / n_layers
    first_acts = max(acts.outside - acts.head, 0.0)
    width_bytes = hidden / cfg.d_model  # bytes per unit of width of one micro-batch's activations
    w_shard, g_shard, o_shard = shards(setup.strategy, dp)
    grad = b.grad / g_shard  # gradient bytes per parameter on a device
    moment = 4 if b.optimizer >= 8 else 2

    pass_widths = {s: sum(parts.block_widths[i] for i in blocks[s]) / tp + (parts.last_widths if s == n_stages - 1
                                                                             else 0) for s in range(n_stages)}

    def stage(s: int, held: list[int]) -> _Stage:
        units: list[tuple[float, float]] = []  # (gradient bytes, activation bytes), in backward order
        if s < n_stages - 1:
            units.append((0.0, hidden))  # the output the schedule caches for the backward
        else:
            units.append((parts.last * grad, acts.head + acts.backward_transient))
        for i in reversed(blocks[s]):
            units.append((parts.block[i] / tp * grad, per_block))
        if s == 0:
            units.append((parts.first * grad, first_acts))
        last = s == n_stages - 1
        parameters = (parts.first if s == 0 else 0) + (parts.last if last else 0) + sum(
            parts.block[i] / tp for i in blocks[s])
        # what a zero-bubble input pass keeps for the weight pass: the first stage's does nothing
        # (its W runs the whole backward) but keeps the gradient it received; the others keep the
        # graph and the gradient of every parameter-using op's output (pipelining._backward)
        pending = (0.0 if last else hidden) + (0.0 if s == 0 else pass_widths[s] * width_bytes)
        return _Stage(s, parameters, units, sum(a for _, a in units) - (acts.backward_transient if last else 0.0),
                      pending, last, 0.0 if last or s + 1 in held else hidden,  # a neighbour on this rank:
                      0.0 if s == 0 or s - 1 in held else hidden)  # handed over, not sent

    order, most, idle = _schedule_facts(pipe.schedule, pipe.pp, pipe.microbatches, virtual)
    value, text = bubble_formula(pipe.schedule, pipe.pp, pipe.microbatches, virtual)
    kind = SCHEDULES[pipe.schedule]
    ranks = []
    for rank in range(pipe.pp):
        ids = held_stages(pipe.schedule, rank, pipe.pp, virtual)
        held = {s: stage(s, ids) for s in ids}
        params = sum(st.parameters for st in held.values())
        w, o = params * b.weight / w_shard, params * b.optimizer / o_shard
        g = params * grad
        gathered = params * b.compute if setup.strategy in ("fsdp", "zero3") and dp > 1 else 0.0
        buffers = sum(pipe.microbatches * hidden * ((s > 0) + (s < n_stages - 1)) for s in held)
        # the last stage's outputs (one stage runs without a schedule)
        logits = acts.logits if (n_stages - 1) in held and LAST_STAGE_KEEPS_OUTPUTS and n_stages > 1 else 0.0
        phases, peak_acts = _walk(order[rank], held, w + o + gathered + buffers, logits, acts, grad,
                                  sends=SENDS_HELD[kind.multi or pipe.schedule])
        full_kept = logits * pipe.microbatches
        phases["end of step"] = w + g + o + gathered + buffers + 2 * full_kept  # the outputs and their concatenation
        fused = not setup.precision.endswith("-mixed")
        temporaries = 0.0 if fused else (
            params * moment / o_shard if setup.device == "cuda" else 2 * moment * max(parts.first, parts.last,
                                                                                       *parts.block))
        phases["optimizer"] = w + g + o + buffers + full_kept + temporaries
        ranks.append(RankMemory(
            rank=rank, stages=list(held), blocks=[blocks[s] for s in held], parameters=int(params), weights=w,
            gradients=g, optimizer=o, gathered=gathered, buffers=buffers, activations=peak_acts, kept_outputs=full_kept,
            in_flight={s: most.get(s, 0) for s in held}, microbatch_activations={s: st.activations for s, st in
                                                                                 held.items()}, phases=phases,
        ))
    return PipelineEstimate(pipe=pipe, virtual=virtual, microbatch_rows=rows,
                            stage_blocks=blocks, ranks=ranks, bubble=max(idle.values()), bubble_formula=value,
                            formula=text)


@lru_cache(maxsize=256)
def _schedule_facts(schedule: str, pp: int, microbatches: int, virtual: int) -> tuple:
    """(order, in flight per stage, idle fraction per rank) of a schedule: they depend on its sizes
    alone, and a layout search asks them for every data-parallel size and memory setting (read
    only: shared between calls)."""
    order = schedule_order(schedule, pp, microbatches, virtual)
    return order, in_flight(order), simulate(order)


#: which sent tensors a schedule's unwaited sends keep alive to the end of the step: the
#: multi-stage runtime (interleaved, zero-bubble) waits every send at the end, so each
#: micro-batch's output and input gradient stay; GPipe waits its backward sends after the last
#: backward; 1F1B waits each send before the next (none held)
SENDS_HELD = {True: "all", "gpipe": "backward", "1f1b": "none"}


@dataclass(frozen=True)
class _Stage:
    """One stage as a rank's walk through the schedule sees it (bytes are per micro-batch)."""

    index: int
    parameters: float  # elements, per tensor-parallel rank
    units: list[tuple[float, float]]  # (gradient bytes, activation bytes) in backward order
    activations: float  # what a micro-batch keeps from its forward to its backward
    pending: float  # what an input pass (I) keeps until the weight pass (W)
    last: bool
    output: float = 0.0  # the output it sends on (none from the last stage)
    input_grad: float = 0.0  # the gradient of its input it sends back (none from the first stage)


def _walk(actions, stages: dict[int, _Stage], base: float, logits: float, acts: Activations, grad: float,
          sends: str = "none") -> tuple[dict[str, float], float]:
    """The most bytes after each forward and during each backward of a rank's ``actions``, and
    the most activation bytes alive at once. ``base``: what stays all step (weights, optimizer
    state, buffers); ``logits``: what the last stage keeps of each micro-batch's output;
    ``grad``: gradient bytes per parameter; ``sends``: which sent tensors the schedule keeps to
    the end of the step (``SENDS_HELD``)."""
    alive: dict[tuple[int, int], float] = {}
    held = 0.0  # sent tensors kept alive by their unwaited sends
    pending: dict[tuple[int, int], float] = {}
    has_grads: set[int] = set()
    kept = peak_acts = 0.0
    phases = {"forward": 0.0, "backward": 0.0}
    # sums that change only with has_grads or pending, kept until they change (a layout search walks
    # hundreds of schedules); alive micro-batches of the last stage, counted as they come and go
    stage_grads = waiting_all = 0
    last_alive = 0
    peaks: dict[tuple[int, bool], float] = {}
    for a in actions:
        st, key = stages[a.stage], (a.stage, a.microbatch)
        grads = stage_grads + held
        waiting = waiting_all
        if a.op == "F":
            if st.last and key not in alive:
                last_alive += 1
            alive[key] = st.activations
            kept += logits if st.last else 0.0
            live = sum(alive.values())
            peak_acts = max(peak_acts, live)
            # the last stage's logits are saved for its loss too: kept outputs count once while alive
            kept_extra = kept - logits * last_alive
            transient = acts.forward_transient if st.last else 0.0
            phases["forward"] = max(phases["forward"], base + grads + waiting + live + kept_extra + transient)
            continue
        others = sum(v for k, v in alive.items() if k != key)
        kept_extra = kept - logits * last_alive
        pending_changed = a.op == "I" or key in pending
        if a.op == "I":
            pending[key] = st.pending
            unit = alive.get(key, 0.0) + st.pending + (acts.backward_transient if st.last else 0.0)
        elif a.op == "W" and a.stage > 0:  # weight gradients from what I kept
            unit = alive.get(key, 0.0) + pending.get(key, 0.0) + (
                st.parameters * grad if a.stage not in has_grads else 0.0)
            waiting -= pending.get(key, 0.0)
        else:  # a full backward (B, or the first stage's W)
            first = a.stage not in has_grads
            if (a.stage, first) not in peaks:
                peaks[a.stage, first] = _backward_peak(st.units, first)
            unit = peaks[a.stage, first] + pending.get(key, 0.0)
            waiting -= pending.get(key, 0.0)
        if a.op != "I":
            if key in alive and sends == "all":  # freed by the backward, but its send still holds it
                held += st.output
            if key in alive and st.last:
                last_alive -= 1
            alive.pop(key, None)
            pending.pop(key, None)
            if a.stage not in has_grads:
                has_grads.add(a.stage)
                stage_grads = sum(stages[s].parameters * grad for s in has_grads)
        phases["backward"] = max(phases["backward"], base + grads + others + waiting + kept_extra + unit)
        if a.op in ("B", "I") and sends in ("all", "backward"):
            held += st.input_grad
        if pending_changed:
            waiting_all = sum(pending.values())
    return phases, peak_acts


def _backward_peak(units: list[tuple[float, float]], first: bool) -> float:
    """Most bytes of one micro-batch's backward at one stage beyond the other micro-batches: its
    units (gradient bytes, activation bytes) run in order, each allocating its gradients (the
    first backward of the step only) while its activations exist, then freeing them."""
    remaining = sum(a for _, a in units)
    made = peak = 0.0
    for grads, activations in units:
        if first:
            made += grads
        peak = max(peak, made + remaining)
        remaining -= activations
    return peak


def step_time(flops_per_token: float, setup: Setup, pipe: Pipeline, bubble: float, peak_flops: float,
              mfu: float) -> dict:
    """Seconds per optimizer step of one replica: its tokens' model FLOPs over ``pp x tp`` devices
    at ``mfu`` of ``peak_flops``, stretched by the bubble (each device is idle that fraction)."""
    tokens = setup.batch_size * setup.seq_len
    compute = flops_per_token * tokens / (pipe.pp * pipe.tp * peak_flops * mfu)
    return {"compute_seconds": compute, "seconds": compute / (1 - bubble),
            "bubble_seconds": compute * bubble / (1 - bubble), "slowdown": 1 / (1 - bubble)}


__all__ = ["Action", "LAST_STAGE_KEEPS_OUTPUTS", "Pipeline", "PipelineEstimate", "RankMemory", "bubble_formula",
           "check_pipeline", "estimate_pipeline", "stage_blocks", "step_time"]
