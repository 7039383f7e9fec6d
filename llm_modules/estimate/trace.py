"""Measure what autograd saves for the backward pass by running the real modules on data-less CPU tensors.

The model is built on the meta device and run as ``estimate.meta_cpu.MetaCPU`` tensors: meta
tensors that report device ``cpu``, so that autograd, CPU autocast and the modules take the CPU's
paths, with shapes, dtypes and no data; a forward at the real batch and sequence length costs no
memory and little time. ``torch.autograd.graph.saved_tensors_hooks`` sees every tensor a
derivative formula (or a custom ``autograd.Function``) keeps, exactly as in a real CPU run, and
the storages are counted once each (autograd keeps a storage once however many ops save it, or
views of it).

A ``TorchDispatchMode`` under autograd marks the storages that are parameters or autocast's casts
of them (model states, counted apart), and those that ``estimate.cuda`` says a GPU keeps
differently (dropout noise, layer-norm inputs in half precision under autocast); module hooks tell
which block is running when a tensor is saved; and the mode answers the few data-dependent
questions a forward asks (``Tracer.resolve``), since the tensors hold no values.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from llm_modules.estimate.meta_cpu import (
    DataDependent,
    MetaCPU,
    QuickMode,
    as_meta_cpu,
    meta_as_cpu,
    refs_without_compiler,
    storage_key,
)
from llm_modules.registry import ConfigError

aten = torch.ops.aten
OUTSIDE = None  # where a tensor is saved outside every block (embeddings, final norm, head, loss)


@dataclass
class Storage:
    """One storage that autograd keeps: its bytes and elements, and the blocks that keep it."""

    nbytes: int
    numel: int
    saved_in: set = field(default_factory=set)
    #: dropout's scaled noise (``estimate.cuda``: a bool mask on a GPU)
    dropout_noise: bool = False
    #: a half-precision layer-norm input under autocast (``estimate.cuda``: upcast on a GPU)
    half_norm_input: bool = False
    #: a parameter, or autocast's cast of one: model states, not activations
    weight: bool = False
    #: how many blocks had run when it was last saved outside every block: all of them for the
    #: final norm's, the head's and the loss's tensors (a pipeline's last stage keeps those)
    after_blocks: int = 0


@dataclass
class Trace:
    """What one forward (and loss) kept. ``blocks``: block ids in the order they ran, each a
    (stack, index) pair; ``block_inputs``: the bytes of each block's hidden-state input."""

    storages: dict[int, Storage]
    blocks: list
    block_inputs: dict
    logits_bytes: int
    logits_element: int
    approximate: list[str]

    def activations(self) -> dict[int, Storage]:
        return {k: s for k, s in self.storages.items() if not s.weight}


class Tracer(QuickMode):
    """Marks the storages that a GPU keeps differently or that are weights (module doc), tells
    which block keeps each saved storage, and answers data-dependent ops (``resolve``)."""

    def __init__(self, params: set[int]):
        super().__init__()
        self.params = params
        self.storages: dict[int, Storage] = {}
        self.casts: set[int] = set()
        self.noise: set[int] = set()
        self.half_norm_inputs: set[int] = set()
        self._alive: list[torch.Tensor] = []
        self.block = OUTSIDE
        self.finished_blocks = 0
        self.modules: list[nn.Module] = []
        self.approximate: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        try:
            out = func(*args, **kwargs)
        except DataDependent:
            out = self.resolve(func, args, kwargs)
        if func.overloadpacket is aten.bernoulli_:  # the CPU's dropout: noise = empty.bernoulli_(1 - p)
            self._mark(self.noise, args[0])
        elif func is aten._to_copy.default and storage_key(args[0]) in self.params:
            self._mark(self.casts, out)
        elif func.overloadpacket is aten.native_layer_norm and args[0].dtype in (torch.float16, torch.bfloat16) \
                and torch.is_autocast_enabled("cpu"):
            self._mark(self.half_norm_inputs, args[0])
        return out

    def _mark(self, marks: set[int], t: torch.Tensor) -> None:
        """Add ``t``'s storage to ``marks``, and keep ``t`` alive: a freed storage's key could be
        reused by a later one."""
        marks.add(storage_key(t))
        self._alive.append(t)

    def resolve(self, func, args, kwargs):
        """The trace's tensors hold no values: answer the data-dependent ops of a forward.

        - reading an integer or bool scalar: 0 (the trace's token ids are all 0, so a bounds
          check on them passes, and so does any check for bad input);
        - ``nonzero`` inside a module that declares ``routes_tokens`` (and its ``n_experts``): an
          even share, the mask's elements / ``n_experts`` (top-k routing: k experts per token);
        - ``bincount`` with a ``minlength``: that many counts.

        Anything else cannot be measured, and the error says where.
        """
        router = next((m for m in reversed(self.modules) if getattr(m, "routes_tokens", False)), None)
        if func is aten._local_scalar_dense.default and not args[0].is_floating_point():
            return 0
        if func.overloadpacket is aten.nonzero and router is not None:
            mask = args[0]
            note = f"{type(router).__name__}: routing assumed even over its {router.n_experts} experts"
            if note not in self.approximate:
                self.approximate.append(note)
            return torch.empty((mask.numel() // router.n_experts, mask.dim()), dtype=torch.long, device=mask.device)
        minlength = kwargs.get("minlength", args[2] if len(args) > 2 else 0)
        if func.overloadpacket is aten.bincount and minlength:
            return torch.zeros(minlength, dtype=torch.long, device=args[0].device)
        where = type(self.modules[-1]).__name__ if self.modules else "the model"
        raise ConfigError(f"estimate: {where} runs {func} whose result depends on the data, which the estimator's "
                          "tensors do not hold, so its activations cannot be measured")

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        """The ``saved_tensors_hooks`` pack hook: note the storage and the block that keeps it."""
        key = storage_key(t)
        storage = self.storages.get(key)
        if storage is None:
            nbytes = t.untyped_storage().nbytes()
            storage = self.storages[key] = Storage(nbytes, nbytes // t.element_size(),
                                                   weight=key in self.params or key in self.casts)
        storage.saved_in.add(self.block)
        if self.block is OUTSIDE:
            storage.after_blocks = self.finished_blocks
        return t


@contextlib.contextmanager
def _hooks(model: nn.Module, tracer: Tracer, blocks: dict[nn.Module, tuple], inputs: dict):
    """Module hooks that tell the tracer which block and which modules are running."""
    handles = []

    def enter(module, args):
        tracer.modules.append(module)
        if module in blocks:
            tracer.block = blocks[module]
            x = args[0]
            inputs[tracer.block] = x.numel() * x.element_size()

    def leave(module, args, output):
        tracer.modules.pop()
        if module in blocks:
            tracer.block = OUTSIDE
            tracer.finished_blocks += 1

    for module in model.modules():
        handles.append(module.register_forward_pre_hook(enter))
        handles.append(module.register_forward_hook(leave))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


#: initializers and in-place writes that only set values, which meta tensors do not hold
_VALUE_WRITES = frozenset({
    "normal_", "uniform_", "trunc_normal_", "kaiming_uniform_", "kaiming_normal_", "xavier_uniform_", "xavier_normal_",
    "orthogonal_", "constant_", "ones_", "zeros_", "eye_", "fill_", "zero_", "copy_",
})


class skip_init(TorchFunctionMode):
    """While building a model on meta tensors (or ``MetaCPU`` ones), skip the initializers' value
    writes: they cost most of the build (each runs torch's Python reference kernels) and change no
    shape."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__name__", "") in _VALUE_WRITES:
            target = args[0] if args else kwargs.get("tensor")
            if isinstance(target, torch.Tensor) and (target.is_meta or type(target) is MetaCPU):
                return target
        return func(*args, **kwargs)


@contextlib.contextmanager
def cpu_mode():
    """``MetaCPU`` tensors (``estimate.meta_cpu``) that take the fast paths of plain tensors
    (``nn.fast.plain_tensors``).

    ``nn/`` sends tensor subclasses the reference way, since a DTensor or quantized weight may not
    support a hand-written kernel; a ``MetaCPU`` tensor stands for a plain CPU tensor here, so it must
    take the path a plain one takes, or the trace would measure the wrong ops. And the loss
    (``nn.loss``) runs in one chunk of rows: its chunk size bounds only its fp32 workspace, which
    is not kept for the backward (``activations`` counts that workspace apart); what it keeps is
    the same, and a chunk loop of a long sequence would cost most of the trace's time.
    """
    from llm_modules.nn import fast, loss

    with refs_without_compiler(), meta_as_cpu(), fast.also_plain(MetaCPU), loss.one_chunk():
        yield


def as_cpu(model: nn.Module) -> nn.Module:
    """A model built on the meta device, in place, with ``MetaCPU`` parameters and buffers
    (tied parameters staying tied)."""
    return _swap(model, as_meta_cpu)


def to_dtype(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """``model.to(dtype)`` for a model of ``MetaCPU`` tensors, in place: floating parameters and
    buffers, tied parameters staying tied."""
    return _swap(model, lambda t: t.to(dtype) if t.is_floating_point() else t)


def _swap(model: nn.Module, new) -> nn.Module:
    """Replace each parameter and buffer ``t`` by ``new(t)`` (``Module.to`` swaps tensors through
    ``.data``, which a wrapper subclass refuses), tied ones staying tied."""
    done: dict[int, torch.Tensor] = {}
    for module in model.modules():
        for table in (module._parameters, module._buffers):
            for name, t in table.items():
                if t is None:
                    continue
                if id(t) not in done:
                    with torch.no_grad():
                        made = new(t)
                    done[id(t)] = t if made is t else nn.Parameter(made, requires_grad=t.requires_grad) \
                        if isinstance(t, nn.Parameter) else made
                table[name] = done[id(t)]
    return model


def trace(model: nn.Module, run, *, autocast: torch.dtype | None = None, around=None) -> Trace:
    """Run ``run(model)`` (forward and loss, returning the logits) under the tracer; ``model`` must
    be made of ``MetaCPU`` tensors (``as_cpu``), and ``cpu_mode`` still active. Blocks are the
    ``layers`` of the stacks that ``model.stack_names`` names; ``around`` wraps the run
    (``estimate.cuda``)."""
    params = {storage_key(p) for p in model.parameters()} | {storage_key(b) for b in model.buffers()}
    tracer = Tracer(params)
    blocks = {layer: (name, i) for name in model.stack_names for i, layer in enumerate(getattr(model, name).layers)}
    inputs: dict = {}
    cast = torch.autocast("cpu", dtype=autocast) if autocast is not None else contextlib.nullcontext()
    with _hooks(model, tracer, blocks, inputs), tracer, (around or contextlib.nullcontext)(), cast, \
            torch.autograd.graph.saved_tensors_hooks(tracer.pack, lambda t: t):
        logits = run(model)
    for key, storage in tracer.storages.items():
        storage.half_norm_input = key in tracer.half_norm_inputs
        storage.dropout_noise = key in tracer.noise
    return Trace(tracer.storages, [b for b in blocks.values() if b in inputs], inputs,
                 logits.numel() * logits.element_size(), logits.element_size(), tracer.approximate)
