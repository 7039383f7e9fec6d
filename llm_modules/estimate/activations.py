"""Activation memory of a training step: the tensors autograd keeps from the forward for the backward.

Measured, not modelled: the real model of the config (``nn/``, plugins included) runs one training
forward and the loss at the real batch and sequence length on CPU tensors without data
(``estimate.trace``), and ``saved_tensors_hooks`` collect what autograd keeps, each storage once.
Precision is the real one: fp32, autocast (fp32 weights, bf16 matmuls; fp16 keeps the same bytes),
or half-precision weights. LoRA is applied as ``peft`` applies it, so frozen weights keep no inputs
for their gradients. On a GPU target ``estimate.cuda`` applies the few differences of CUDA kernels.

Blocks: every block of a stack saves the same (they are one module repeated), except that the
first may save less when its input needs no gradient (frozen embeddings under LoRA). So the trace
builds each stack with at most two blocks, and the others count as the last traced one. Under LoRA
it builds three: a tensor that blocks share (the rotary tables) may then be kept from the second
block on only, and takes two blocks to be seen as shared; and all blocks when LoRA adapts some
blocks and not others. A storage kept by
one block only is that block's; one kept by several (rotary tables, the encoder output, a shared
bias) or outside the blocks (embeddings, final norm, head, loss) counts once, outside.
Activation checkpointing keeps each block's hidden-state input instead of what the block saves.

``tests/integration/test_estimate.py`` compares with what real models save and with the peak of real CPU
training runs; ``tests/unit/test_estimate_contract.py`` does so for every registered component.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import torch

from llm_modules.estimate.meta_cpu import refs_without_compiler
from llm_modules.estimate.trace import OUTSIDE, Trace, as_cpu, cpu_mode, skip_init, to_dtype, trace
from llm_modules.nn.loss import CHUNK_ELEMENTS

FP32 = 4
#: the dtypes the trace runs half precision in (fp16 keeps the same bytes as bf16)
HALF = torch.bfloat16


@dataclass(frozen=True)
class Training:
    """Which weights train: all of them, or LoRA of rank ``lora_rank`` on the linear layers that the
    ``lora_targets`` patterns match (``peft.targets``), with everything else frozen."""

    lora_rank: int = 0
    lora_targets: tuple[str, ...] = ()

    @property
    def full(self) -> bool:
        return self.lora_rank == 0


def mode_for(precision: str, params_half: bool) -> str:
    """How a Lightning precision flag runs the model, given whether the strategy holds half-precision
    parameters (DeepSpeed and FSDP run mixed precision on half weights; plain autocast does not):
    ``fp32``, ``autocast`` or ``half``."""
    if precision == "32-true":
        return "fp32"
    if precision.endswith("-mixed") and not params_half:
        return "autocast"
    return "half"


@dataclass(frozen=True)
class Activations:
    """Bytes one micro-batch keeps on one device, by where they sit, and the loss's transients."""

    blocks: float  # everything all blocks save
    block: float  # the most one block saves: what recomputing a checkpointed block rebuilds
    block_inputs: float  # what activation checkpointing keeps of the blocks instead
    outside: float  # embeddings, final norm, head and loss (the logits it keeps)
    forward_transient: float  # the loss's fp32 workspace (a chunk of rows) while it is computed
    backward_transient: float  # the loss's gradient over the vocabulary
    #: the part of ``outside`` saved after the last block (final norm, head, loss): what a pipeline's
    #: last stage keeps; the rest (embeddings, tensors the blocks share) is the first stage's
    head: float = 0.0
    #: bytes of the logits (the last stage's output, which a pipeline schedule also keeps)
    logits: float = 0.0
    #: why the figure is not exact (assumptions the trace had to make), empty when it is
    notes: tuple[str, ...] = ()

    @property
    def approximate(self) -> bool:
        return bool(self.notes)

    def saved(self, checkpointing: bool) -> float:
        return self.outside + (self.block_inputs if checkpointing else self.blocks)

    def as_dict(self) -> dict:
        return {
            "blocks": self.blocks, "block": self.block, "block_inputs": self.block_inputs, "outside": self.outside,
            "forward_transient": self.forward_transient, "backward_transient": self.backward_transient,
            "head": self.head, "logits": self.logits, "approximate": self.approximate, "notes": list(self.notes),
        }


def _traced(cfg, kind: str, mode: str, training: Training, batch_size: int, seq_len: int, decoder_len: int,
            device: str) -> Trace:
    """Build the model (with fewer blocks: module doc) on the meta device and trace one training step
    on it as CPU tensors without data (``estimate.trace``)."""
    from llm_modules.estimate import cuda
    from llm_modules.estimate.params import build_model
    from llm_modules.nn.loss import cross_entropy

    short = cfg
    if not training.lora_rank or _same_lora_in_every_block(cfg, kind, training):
        depth = 3 if training.lora_rank else 2
        layers = min(cfg.n_layers, depth)
        # per-layer attention spans keep the pattern's first layers; a sliding and a full layer keep
        # the same tensors for the backward (a window changes the mask's values, not its size)
        short = cfg.replace(n_layers=layers, n_encoder_layers=min(cfg.encoder_layers, depth),
                            layer_types=None if cfg.layer_types is None else list(cfg.layer_types[:layers]))
    with refs_without_compiler(), skip_init(), torch.device("meta"):
        model = build_model(short, kind)
    with cpu_mode():
        as_cpu(model)
        model.train()
        if training.lora_rank:
            from llm_modules.peft.base import apply_peft

            apply_peft(model, {"name": "lora", "r": training.lora_rank, "targets": list(training.lora_targets)})
        if mode == "half":
            to_dtype(model, HALF)

        def run(m):
            ids = torch.zeros(batch_size, seq_len, dtype=torch.long)
            if kind == "seq2seq":
                logits = m(ids, decoder_input_ids=torch.zeros(batch_size, decoder_len, dtype=torch.long))
            elif kind == "prefix":  # a prefix of half of each row: a dense (T x T) mask, whatever its length
                logits = m(ids, prefix_lengths=torch.full((batch_size,), seq_len // 2))
            else:
                logits = m(ids)
            cross_entropy(logits, torch.zeros(logits.shape[:-1], dtype=torch.long))
            return logits

        return trace(model, run, autocast=HALF if mode == "autocast" else None,
                     around=cuda.gpu_kernels if device == "cuda" else None)


def _same_lora_in_every_block(cfg, kind: str, training: Training) -> bool:
    """Whether LoRA's patterns adapt the same layers in every block of each stack; if not (a
    pattern that names one block), the blocks differ, and the trace runs all of them."""
    from llm_modules.estimate.params import meta_model
    from llm_modules.peft.targets import match_modules

    model = meta_model(cfg, kind)
    adapted = {name for name, _ in match_modules(model, list(training.lora_targets), "--lora-targets")}
    for stack in model.stack_names:
        blocks = [f"{stack}.layers.{i}." for i in range(len(getattr(model, stack).layers))]
        inside = [{name[len(prefix):] for name in adapted if name.startswith(prefix)} for prefix in blocks]
        if any(names != inside[0] for names in inside):
            return False
    return True


def _trace_as_declared(cfg, kind, mode, training, batch_size, seq_len, decoder_len, device) -> Trace:
    """Trace; an attention backend that declares it cannot run in the CPU trace is traced as sdpa
    (``estimate.cuda.as_sdpa``), with a note."""
    from llm_modules.estimate.cuda import as_sdpa

    cfg, note = as_sdpa(cfg)
    result = _traced(cfg, kind, mode, training, batch_size, seq_len, decoder_len, device)
    if note:
        result.approximate.append(note)
    return result


def _loss_transients(vocab: int, logits_bytes: int, element: int) -> tuple[float, float]:
    """(forward, backward) workspace of ``nn.loss.cross_entropy`` beside what it saves: it reads the
    logits in fp32 chunks of rows (one chunk of log-sum-exp work, and its fp32 copy from half
    precision); the backward writes one gradient of the logits' dtype (through an fp32 chunk from
    half precision)."""
    elements = logits_bytes // element
    chunk = FP32 * min(elements, max(vocab, CHUNK_ELEMENTS // vocab * vocab))
    half = element != FP32
    return chunk * (2 if half else 1), logits_bytes + (chunk if half else 0)


_CACHE: dict = {}


def estimate_activations(cfg, *, kind: str, precision: str, params_half: bool, batch_size: int, seq_len: int,
                         decoder_len: int | None = None, training: Training | None = None,
                         device: str = "cuda") -> Activations:
    """Activation bytes for ``batch_size`` rows of ``seq_len`` tokens on one device.

    Encoder-decoder models (``kind='seq2seq'``) read ``seq_len`` encoder tokens and
    ``decoder_len`` (default ``seq_len``) decoder tokens per row; the loss is over the decoder's.
    ``device``: ``cuda`` or ``cpu`` (``estimate.cuda`` lists what differs). A prefix LM's mask is a
    dense (T x T) bool per row. Padding is assumed absent (packed sequences).
    """
    mode = mode_for(precision, params_half)
    training = training or Training()
    decoder_len = decoder_len or seq_len
    key = (json.dumps(cfg.to_dict(), sort_keys=True, default=str), kind, mode, training, batch_size, seq_len,
           decoder_len, device)
    if key not in _CACHE:
        if len(_CACHE) > 32:
            _CACHE.clear()
        _CACHE[key] = _measure(cfg, kind, mode, training, batch_size, seq_len, decoder_len, device)
    return _CACHE[key]


def _measure(cfg, kind, mode, training, batch_size, seq_len, decoder_len, device) -> Activations:
    from llm_modules.estimate import cuda

    result = _trace_as_declared(cfg, kind, mode, training, batch_size, seq_len, decoder_len, device)
    size = cuda.bytes_on_gpu if device == "cuda" else (lambda storage: storage.nbytes)
    per_block: dict = {}
    outside = head = 0
    for storage in result.activations().values():
        owners = storage.saved_in
        if len(owners) == 1 and OUTSIDE not in owners:
            (block,) = owners
            per_block[block] = per_block.get(block, 0) + size(storage)
        else:
            outside += size(storage)
            if owners == {OUTSIDE} and storage.after_blocks == len(result.blocks):
                head += size(storage)
    # the real number of blocks of each stack: the decoder (or only) stack last, as nn.lm lists them
    names = list(dict.fromkeys(name for name, _ in result.blocks))
    real = {name: cfg.n_layers for name in names}
    if len(names) > 1:
        real[names[0]] = cfg.encoder_layers
    blocks = largest = inputs = 0.0
    for name in names:
        traced = [b for b in result.blocks if b[0] == name]
        saved = [per_block.get(b, 0) for b in traced]
        kept = [result.block_inputs[b] for b in traced]
        untraced = real[name] - len(traced)
        blocks += sum(saved) + saved[-1] * untraced
        inputs += sum(kept) + kept[-1] * untraced
        largest = max(largest, *saved)
    forward, backward = _loss_transients(cfg.vocab_size, result.logits_bytes, result.logits_element)
    return Activations(blocks=blocks, block=largest, block_inputs=inputs, outside=outside,
                       forward_transient=forward, backward_transient=backward, head=head,
                       logits=result.logits_bytes, notes=tuple(result.approximate))
