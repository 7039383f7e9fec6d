"""Meta tensors that say they are on the CPU: the estimator's trace runs the CPU's code paths on no data.

A plain meta tensor holds shapes and no data, as the trace needs, but it does not take the paths a
CPU tensor takes: CPU autocast skips it (autocast keys come from the device), sdpa picks its math
fallback instead of the CPU's fused kernel, code that asks ``device.type`` sees ``meta``, and
several meta kernels answer as a GPU would (layer norm's statistics in fp32, for one). A
``MetaCPU`` tensor is a meta tensor whose dispatch keys and ``device`` say ``cpu``: autograd and
autocast treat it as a CPU tensor, and ``meta_as_cpu`` (a dispatch mode, active for the whole trace)
runs each op's meta kernel on plain meta tensors sharing its storages (``elem``: a tensor subclass
handed to an op makes torch import DTensor to check whether it is one), and makes what comes out
``MetaCPU``. The answers that differ on the CPU come from the CPU: sdpa's choice of kernel (asked
of CPU tensors of the same sizes over one row of storage), layer norm (torch's reference, which asks the tensors'
device, run on ``MetaCPU`` tensors, as torch's fake tensors do). Ops on real tensors only (a
constant made with ``torch.tensor``) run for real. Storages are real meta storages: a view shares
its base's, as on the CPU.

``torch._subclasses.FakeTensorMode`` does this and more (symbolic shapes), but importing it costs
``torch._dynamo`` and DTensor: most of ``llm-modules estimate``'s start-up. Torch's meta kernels
are mostly Python references, which need ``refs_without_compiler`` to stay clear of both (they
still import sympy: ``torch._prims_common.elementwise_dtypes`` does on every call).

Ops whose result depends on values (``.item()``, ``nonzero``, ``bincount``) raise ``DataDependent``
(their output shape or value cannot be known); ``estimate.trace.Tracer.resolve`` answers them.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

import torch
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes
from torch.utils._pytree import tree_leaves, tree_map

aten = torch.ops.aten
_CPU = torch.device("cpu")
_META = torch.device("meta")


class DataDependent(Exception):
    """An op whose output shape or value depends on the data, which meta tensors do not hold."""

    def __init__(self, func):
        super().__init__(f"{func} depends on the data")
        self.func = func


class MetaCPU(torch.Tensor):
    """A meta tensor that reports device ``cpu`` (module doc), made from a plain meta tensor
    (``elem``, which the kernels get) whose storage it shares."""

    elem: torch.Tensor

    @staticmethod
    def __new__(cls, elem: torch.Tensor):
        out = torch.Tensor._make_subclass(cls, elem, elem.requires_grad, dispatch_device=True,
                                          device_for_backend_keys=_CPU)
        out.elem = elem
        return out

    @property
    def device(self) -> torch.device:
        return _CPU

    def __repr__(self) -> str:
        return f"MetaCPU({tuple(self.shape)}, dtype={self.dtype})"

    __torch_function__ = torch._C._disabled_torch_function_impl

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        with meta_as_cpu() as mode:
            return mode.__torch_dispatch__(func, types, args, kwargs)


def storage_key(t: torch.Tensor) -> int:
    """Tells storages apart: views share their base's key, as on the CPU."""
    return t.untyped_storage()._cdata


def _to_kernel(x):
    """An argument as the meta kernels take it: a plain meta tensor (a tensor subclass would make
    torch import DTensor to check whether it is one), a real tensor (a constant made before the
    trace) as one of its layout, and the ``cpu`` device as ``meta``."""
    if type(x) is MetaCPU:
        return x.elem
    if isinstance(x, torch.Tensor):
        return as_meta_cpu(x).elem
    if isinstance(x, torch.device) and x.type == "cpu":
        return _META
    return x


def _cpu_like(x):
    """A CPU tensor with ``x``'s sizes, dtype and last stride (what sdpa's choice of kernel reads),
    over a storage of one row: the others repeat it (stride 0), so a long sequence costs nothing."""
    if type(x) is not MetaCPU:
        return x
    if x.dim() == 0:
        cpu = torch.empty((), dtype=x.dtype)
    else:
        last = x.stride(-1)
        row = torch.empty((x.shape[-1] - 1) * last + 1 if x.numel() else 0, dtype=x.dtype)
        cpu = row.as_strided(x.shape, [0] * (x.dim() - 1) + [last])
    return cpu.requires_grad_(x.requires_grad) if x.is_floating_point() else cpu


class QuickMode(TorchDispatchMode):
    """A dispatch mode whose ``__torch_dispatch__`` torch does not wrap in ``torch._disable_dynamo``
    (``TorchDispatchMode.__init_subclass__``): that wrapper imports ``torch._dynamo`` on its first
    call, and nothing here is compiled."""

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        return False


#: ops whose meta kernel answers for a GPU, run as torch's reference (which asks the tensors'
#: device) on ``MetaCPU`` tensors; torch's fake tensors do the same
_BY_REFERENCE = {aten.native_layer_norm.default: "native_layer_norm"}


class meta_as_cpu(QuickMode):
    """Runs every op's meta kernel for ``MetaCPU`` tensors and makes what comes out ``MetaCPU``
    (module doc)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.prim.device.default:
            return _CPU
        if not _constructor(func) and not any(type(x) is MetaCPU for x in tree_leaves((args, kwargs))):
            # real tensors only (a constant made with torch.tensor): computed, values and all, as
            # fake tensors keep the values of their constants
            return func(*args, **kwargs)
        if _data_dependent(func, args, kwargs):
            raise DataDependent(func)
        if func is aten._fused_sdp_choice.default:  # the CPU's choice of kernel (meta's is the math one)
            with _disable_current_modes():
                return func(*tree_map(_cpu_like, args), **tree_map(_cpu_like, kwargs))
        if func in _BY_REFERENCE:
            from torch import _refs

            with self:
                return getattr(_refs, _BY_REFERENCE[func])(*args, **kwargs)
        inputs = {id(a.elem): a for a in args if type(a) is MetaCPU}
        meta_args, meta_kwargs = tree_map(_to_kernel, args), tree_map(_to_kernel, kwargs)
        if meta_kwargs.get("device") is None and _constructor(func):
            meta_kwargs["device"] = _META
        with torch._C._DisableTorchDispatch():
            out = func(*meta_args, **meta_kwargs)
        return tree_map(lambda x: _from_kernel(x, inputs), out)


def _from_kernel(x, inputs: dict):
    """A kernel's output as a ``MetaCPU`` tensor; an in-place op's (its input's meta tensor) as
    that input itself, not a new tensor over the same storage."""
    if type(x) is not torch.Tensor:
        return x
    same = inputs.get(id(x))
    return same if same is not None else MetaCPU(x)


def _data_dependent(func, args, kwargs) -> bool:
    """Whether ``func``'s output shape or value depends on the data: tagged so by torch, except
    an index by integer tensors and a ``repeat_interleave`` told its output size."""
    if torch.Tag.data_dependent_output in func.tags:
        return True
    if torch.Tag.dynamic_output_shape not in func.tags:
        return False
    if func is aten.index.Tensor:
        return any(i is not None and i.dtype in (torch.bool, torch.uint8) for i in args[1])
    if func is aten.repeat_interleave.Tensor:
        return kwargs.get("output_size") is None
    return True


def _constructor(func) -> bool:
    """Whether ``func`` makes a tensor from no tensor (``empty``, ``zeros``, ``arange``...): its
    ``device`` (the CPU by default) is then meta."""
    schema = func._schema
    return any(a.name == "device" for a in schema.arguments) and \
        not any(isinstance(a.type, torch.TensorType) for a in schema.arguments)


def as_meta_cpu(t: torch.Tensor) -> MetaCPU:
    """``t`` (meta, or a real CPU tensor) as a ``MetaCPU`` tensor of the same layout."""
    with _disable_current_modes():
        elem = t.detach() if t.is_meta else torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device=_META)
        return MetaCPU(elem)


@contextlib.contextmanager
def refs_without_compiler() -> Iterator[None]:
    """Run meta kernels without importing ``torch._dynamo`` or sympy (most of the trace's cost otherwise).

    Most meta kernels are torch's Python references. The type-promoting ones are wrapped in
    ``torch._disable_dynamo``, which imports ``torch._dynamo`` on its first call to build the
    disabled function, and caches it on the wrapped one (``__dynamo_disable``); while dynamo has
    not been imported nothing can be compiling, so the disabled function is the function itself:
    for the duration, each wrapped reference caches itself. And their shape checks
    (``torch._check``) import sympy's symbolic shapes to evaluate even a plain ``True``; for the
    duration a plain ``True`` passes at once (anything else goes the usual way). Both are undone
    after, so that a later ``torch.compile`` in the same process finds torch as it was.
    """
    if "torch._dynamo" in sys.modules:
        yield
        return
    patched = []
    for fn in _dynamo_disabled_refs():
        if _CACHE_NAME not in fn.__dict__:
            setattr(fn, _CACHE_NAME, fn)
            patched.append(fn)
    check_with = torch._check_with

    def quick_check_with(error_type, cond, message):
        if cond is True:
            return
        check_with(error_type, cond, message)

    torch._check_with = quick_check_with
    try:
        yield
    finally:
        torch._check_with = check_with
        for fn in patched:
            if fn.__dict__.get(_CACHE_NAME) is fn:
                delattr(fn, _CACHE_NAME)


_CACHE_NAME = "__dynamo_disable"  # torch._compile._disable_dynamo's cache of the disabled function
_FOUND: list = []


def _dynamo_disabled_refs() -> list:
    """The functions that ``torch._disable_dynamo`` wrapped in torch's references, decompositions
    and meta registrations (found once: the wrappers' closures, reached from the modules' functions)."""
    if _FOUND:
        return _FOUND[0]
    wrapper_code = torch._disable_dynamo(lambda: None).__code__
    found: dict[int, object] = {}
    seen: set[int] = set()
    roots = [f for name, module in list(sys.modules.items())
             if module is not None and name.startswith(("torch._refs", "torch._prims", "torch._decomp",
                                                        "torch._meta_registrations"))
             for f in vars(module).values() if callable(f)]
    while roots:
        f = roots.pop()
        if id(f) in seen:
            continue
        seen.add(id(f))
        code = getattr(f, "__code__", None)
        cells = getattr(f, "__closure__", None) or ()
        if code is wrapper_code:
            inner = cells[code.co_freevars.index("fn")].cell_contents
            found[id(inner)] = inner
        for cell in cells:
            try:
                value = cell.cell_contents
            except ValueError:  # an empty cell
                continue
            if callable(value):
                roots.append(value)
        wrapped = getattr(f, "__wrapped__", None)
        if wrapped is not None:
            roots.append(wrapped)
    _FOUND.append(list(found.values()))
    return _FOUND[0]
