"""Memory per device of a training step: model states under a precision and a parallel strategy,
the activations of ``estimate.activations``, and the peak over the phases of a step.

Model states per parameter (bytes of weight + gradient + optimizer state, AdamW's two moments):

============================  =======================  ==========================================
strategy                      32-true                  half precision (16/bf16, -mixed or -true)
============================  =======================  ==========================================
ddp (torch autocast), fsdp    4 + 4 + 8                -mixed: 4 + 4 + 8 (fp32 weights are the
                                                       master copy; autocast casts them per use)
                                                       -true: 2 + 2 + 4 (moments in the weights'
                                                       dtype)
zero1/2/3 (DeepSpeed)         4 + 4 + 8                2 + 2 + 12 (fp32 master weights and
                                                       moments: the ZeRO paper's K = 12)
============================  =======================  ==========================================

Sharding over the data-parallel size N (Rajbhandari et al., 2020, "ZeRO", Figure 1): zero1
divides the optimizer state by N, zero2 also the gradients, zero3 and fsdp (FULL_SHARD) also the
weights. With LoRA only LoRA's matrices have gradients and optimizer state; the frozen base is
stored, and sharded, like any weight.

Beyond model states and activations, a device holds:

- compute copies: under autocast the half-precision casts of the linear weights, kept from the
  forward to the backward (the linear layers save them): 2 bytes per linear weight.
- gathered weights (zero3, fsdp): a sharded model is unsharded a unit at a time. FSDP's root unit
  (embeddings, head, final norm) stays gathered from the forward to the backward; two blocks are
  gathered at once (the running one and the prefetched next), and in the backward one block's
  full gradients exist until they are reduce-scattered. DeepSpeed ZeRO-3 is counted the same way.
- communication buffers: DDP's gradient buckets (a second copy of the gradients, torch's default
  ``gradient_as_bucket_view=False``); DeepSpeed stage 1/2's reduce and all-gather buckets
  (Lightning's defaults, 2e8 elements each). Single-device runs have none.

The peak is the largest of four moments of a step, because what is alive differs:

- end of the forward: every saved activation and the logits; the gradients too where they live
  across the forward: under gradient accumulation (``accumulate`` > 1, the window's earlier
  micro-batches' sums) and under DeepSpeed (its gradient partitions). Otherwise the trainer frees
  them right after each optimizer step (``training.stability``);
- start of the backward: the loss's two fp32 gradients over the vocabulary (and the gradients
  where they live across the forward);
- with activation checkpointing, recomputing the first block: nearly all gradients exist again;
- the optimizer step: AdamW's temporaries (``foreach`` on CUDA: a copy of one moment per
  parameter; the CPU's per-tensor loop: two copies of the largest tensor; none for the fused
  kernel, which ``optim.fused: null`` picks under the plain precisions outside DeepSpeed).

``tests/integration/test_estimate.py`` compares the peak with a measured CPU training run (Lightning's
``Trainer.fit``), the numbers of the ZeRO paper, and the activations with real models.
"""

from __future__ import annotations

from dataclasses import dataclass

from llm_modules.estimate.activations import Activations, Training, estimate_activations
from llm_modules.estimate.params import ParameterCount
from llm_modules.registry import ConfigError

PRECISIONS = ("32-true", "bf16-mixed", "16-mixed", "bf16-true", "16-true")
STRATEGIES = ("ddp", "zero1", "zero2", "zero3", "fsdp")
DEEPSPEED = ("zero1", "zero2", "zero3")
#: Lightning's DeepSpeedStrategy defaults: reduce_bucket_size and allgather_bucket_size (elements)
DEEPSPEED_BUCKET = 200_000_000


def check_choice(value: str, choices: tuple[str, ...], option: str) -> str:
    if value not in choices:
        import difflib

        close = difflib.get_close_matches(value, choices, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"{option} {value!r} is not known{hint}; choose one of {', '.join(choices)}")
    return value


@dataclass(frozen=True)
class StateBytes:
    """Bytes per parameter: stored weight, gradient, optimizer state; ``compute``: the dtype the
    matmuls run in (what gathered and autocast-cast weights take)."""

    weight: int
    grad: int
    optimizer: int
    compute: int

    @property
    def params_half(self) -> bool:
        return self.weight == 2


def state_bytes(precision: str, strategy: str) -> StateBytes:
    """Per-parameter bytes of a Lightning precision flag under a strategy (table in the module doc)."""
    check_choice(precision, PRECISIONS, "--precision")
    check_choice(strategy, STRATEGIES, "--strategy")
    if precision == "32-true":
        return StateBytes(4, 4, 8, 4)
    if strategy in DEEPSPEED:
        return StateBytes(2, 2, 12, 2)
    if precision.endswith("-true"):
        return StateBytes(2, 2, 4, 2)
    return StateBytes(4, 4, 8, 2)


def shards(strategy: str, devices: int) -> tuple[int, int, int]:
    """Into how many parts (weights, gradients, optimizer state) are split per device."""
    n = devices
    return {
        "ddp": (1, 1, 1), "zero1": (1, 1, n), "zero2": (1, n, n), "zero3": (n, n, n), "fsdp": (n, n, n),
    }[strategy]


@dataclass(frozen=True)
class ModelStates:
    weights: float
    gradients: float
    optimizer: float

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer


def model_states(parameters: float, trainable: float, precision: str, strategy: str, devices: int) -> ModelStates:
    """Bytes per device of weights, gradients and optimizer state (the ZeRO paper's model states)."""
    b = state_bytes(precision, strategy)
    w, g, o = shards(strategy, devices)
    return ModelStates(parameters * b.weight / w, trainable * b.grad / g, trainable * b.optimizer / o)


@dataclass(frozen=True)
class Setup:
    """The run whose memory is estimated: ``batch_size`` rows of ``seq_len`` tokens per device per
    micro-batch, on ``devices`` data-parallel devices."""

    precision: str = "32-true"
    strategy: str = "ddp"
    devices: int = 1
    batch_size: int = 1
    seq_len: int = 512
    decoder_len: int | None = None
    activation_checkpointing: bool = False
    device: str = "cuda"
    #: micro-batches per optimizer step (``trainer.accumulate_grad_batches``)
    accumulate: int = 1

    def check(self) -> Setup:
        state_bytes(self.precision, self.strategy)
        for name in ("devices", "batch_size", "seq_len", "accumulate"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be a positive integer; got {value!r}")
        if self.device not in ("cuda", "cpu"):
            raise ConfigError(f"--device must be cuda or cpu; got {self.device!r}")
        return self


class PhasePeak:
    """The peak of an estimate whose ``phases`` hold the bytes at each moment of a step."""

    phases: dict[str, float]

    @property
    def peak(self) -> float:
        return max(self.phases.values())

    @property
    def peak_phase(self) -> str:
        return max(self.phases, key=self.phases.get)


@dataclass(frozen=True)
class MemoryEstimate(PhasePeak):
    """Bytes per device. ``activations``: what the step keeps for its backward pass; ``phases``:
    the total at each moment of the step (see the module doc); ``peak`` the largest of them."""

    weights: float
    gradients: float
    optimizer: float
    compute_copies: float
    gathered: float
    buffers: float
    activations: float
    phases: dict[str, float]
    detail: Activations

    @property
    def model_states(self) -> float:
        return self.weights + self.gradients + self.optimizer

    def as_dict(self) -> dict:
        return {
            "weights": self.weights, "gradients": self.gradients, "optimizer": self.optimizer,
            "model_states": self.model_states, "compute_copies": self.compute_copies, "gathered": self.gathered,
            "buffers": self.buffers, "activations": self.activations, "phases": dict(self.phases),
            "peak": self.peak, "peak_phase": self.peak_phase, "activation_detail": self.detail.as_dict(),
        }


def estimate_memory(cfg, kind: str, params: ParameterCount, setup: Setup, *, lora_parameters: int = 0,
                    training: Training | None = None) -> MemoryEstimate:
    """Bytes per device of one training step of ``cfg`` under ``setup``.

    ``params``: the model's counts (``estimate.params.count``); with LoRA, ``lora_parameters`` are
    what trains and ``training`` says which linear layers they adapt (``estimate.lora.plan_lora``).
    """
    setup.check()
    training = training or Training()
    b = state_bytes(setup.precision, setup.strategy)
    n = setup.devices
    trainable = lora_parameters if lora_parameters else params.total
    states = model_states(params.total + lora_parameters, trainable, setup.precision, setup.strategy, n)
    # torch autocast runs only where the weights stay fp32 (ddp); DeepSpeed and FSDP compute with
    # half-precision weights, so their activations are those of a half-precision model
    autocast = setup.precision.endswith("-mixed") and setup.strategy == "ddp"
    act = estimate_activations(
        cfg, kind=kind, precision=setup.precision, params_half=b.compute == 2 and not autocast,
        batch_size=setup.batch_size, seq_len=setup.seq_len, decoder_len=setup.decoder_len, training=training,
        device=setup.device,
    )
    copies = 2 * params.linear_weights if autocast else 0.0

    # Gathered weights of a sharded model (and FSDP's low-precision copy of a single shard).
    block = max(params.block, params.encoder_block)
    n_blocks = params.n_blocks + params.n_encoder_blocks
    gathered = gathered_backward = 0.0
    if setup.strategy in ("zero3", "fsdp"):
        if n > 1:
            gathered = b.compute * (params.outside_blocks + 2 * block)
            gathered_backward = gathered + b.compute * block  # a block's full gradients before reduce-scatter
        elif b.compute != b.weight:  # one device: FSDP still keeps its compute-dtype copy of the weights
            gathered = gathered_backward = b.compute * params.total

    buffers = 0.0
    if n > 1 and setup.strategy == "ddp":
        buffers = trainable * b.grad
    elif setup.strategy in ("zero1", "zero2"):
        buffers = 2 * min(DEEPSPEED_BUCKET, trainable) * b.grad

    w, g, o = states.weights, states.gradients, states.optimizer
    saved = act.saved(setup.activation_checkpointing)
    # Gradients alive through the forward and backward: DeepSpeed's partitions, and under accumulation
    # the window's sums so far; otherwise the trainer frees them after each optimizer step.
    resident_grads = g if setup.strategy in DEEPSPEED or setup.accumulate > 1 else 0.0
    phases = {
        "forward": w + resident_grads + o + copies + gathered + buffers + saved + act.forward_transient,
        "backward": w + resident_grads + o + copies + gathered + buffers + saved + act.backward_transient,
    }
    if setup.activation_checkpointing and n_blocks:
        # the head's tensors are freed by then; the first block's input and its rebuilt activations
        phases["recompute"] = (w + g + o + copies / n_blocks + gathered_backward + buffers
                               + act.block_inputs / n_blocks + act.block)
    moment = 4 if b.optimizer >= 8 else 2  # bytes of one AdamW moment
    fused = not setup.precision.endswith("-mixed") and setup.strategy not in DEEPSPEED  # optim.fused: null
    if fused:
        temporaries = 0.0
    elif setup.device == "cuda":  # foreach AdamW: one moment-sized temporary over all (local) parameters
        temporaries = trainable * moment / shards(setup.strategy, n)[2]
    elif lora_parameters:  # the per-tensor loop: two temporaries the size of the largest tensor
        temporaries = 0.0  # (LoRA's matrices are small)
    else:
        temporaries = 2 * moment * params.largest_tensor
    phases["optimizer"] = w + g + o + buffers + temporaries
    return MemoryEstimate(
        weights=w, gradients=g, optimizer=o, compute_copies=copies, gathered=gathered, buffers=buffers,
        activations=saved, phases=phases, detail=act,
    )
