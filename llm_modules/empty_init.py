"""Build a model without allocating its weights, then give it tensors by assignment.

Loading a checkpoint the plain way builds the model (memory for every weight, filled with an init
that is thrown away) and copies the checkpoint's tensors into it: two copies at the peak. Here the
model is built inside :func:`parameters_on_meta` (every parameter lands on the meta device: no memory,
no init work) and :func:`assign` hands it the checkpoint's tensors themselves
(``load_state_dict(assign=True)``), memory-mapped ones included: one copy, which the file's pages are.

Buffers are built for real, on the CPU as usual: the non-persistent ones (RoPE ``inv_freq``, ALiBi
slopes) are computed by the modules' own constructors and are never in a checkpoint, so they must
not be left on meta. Only ``register_parameter`` is intercepted, which every ``nn.Parameter``
assignment goes through; a parameter that is already on meta (a head tied to the embedding:
``head.weight = embed.weight``) is kept as the same object, so ties hold on meta.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Mapping

import torch
from torch import nn

from llm_modules.registry import ConfigError

_LOCK = threading.Lock()
_LOCAL = threading.local()
_ORIGINAL = nn.Module.register_parameter
_USERS = 0  # blocks open in any thread: the patch is installed while there is one


def _register(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
    _ORIGINAL(module, name, param)
    if getattr(_LOCAL, "depth", 0) and param is not None and param.device.type != "meta":
        module._parameters[name] = type(param)(param.to("meta"), requires_grad=param.requires_grad)


@contextlib.contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Within the block, every parameter a module registers in this thread is moved to the meta
    device (see the module docstring); other threads build as usual. ``nn.Module.register_parameter``
    is wrapped while any thread is inside such a block."""
    global _USERS
    with _LOCK:
        _USERS += 1
        nn.Module.register_parameter = _register
    _LOCAL.depth = getattr(_LOCAL, "depth", 0) + 1
    try:
        yield
    finally:
        _LOCAL.depth -= 1
        with _LOCK:
            _USERS -= 1
            if not _USERS:
                nn.Module.register_parameter = _ORIGINAL


def assign(model: nn.Module, state: Mapping[str, torch.Tensor], where: str) -> None:
    """Give ``model`` (built under :func:`parameters_on_meta`) the tensors of ``state``, strictly.

    Each tensor is used as it is (no copy) when it is contiguous and owns its storage; a view of a
    larger tensor (a fused q/k/v split, a transposed Conv1D weight) is copied once, so that no two
    parameters share memory (safetensors refuses to save those, and an in-place update of one must
    not show in another). Parameters that were one object (tied) are one object again after the
    assignment, which ``load_state_dict(assign=True)`` alone would split into two."""
    aliases = _aliases(model)
    owned: dict[int, torch.Tensor] = {}
    tensors = {}
    for name, tensor in state.items():
        if id(tensor) not in owned:
            owned[id(tensor)] = tensor if _owns_storage(tensor) else tensor.contiguous().clone()
        tensors[name] = owned[id(tensor)]
    missing, unexpected = model.load_state_dict(tensors, strict=False, assign=True)
    if missing or unexpected:
        raise ConfigError(f"{where}: the checkpoint does not match its config.json "
                          f"(missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]})")
    for alias, first in aliases.items():
        owner, _, leaf = alias.rpartition(".")
        setattr(model.get_submodule(owner), leaf, model.get_parameter(first))
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise ConfigError(f"{where}: the checkpoint gave no value for {left[:5]}; the weights do not match config.json")


def _aliases(model: nn.Module) -> dict[str, str]:
    """Parameter name -> the name under which the same parameter object was first seen (ties)."""
    first: dict[int, str] = {}
    aliases = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in first:
            aliases[name] = first[id(param)]
        else:
            first[id(param)] = name
    return aliases


def _owns_storage(tensor: torch.Tensor) -> bool:
    return (tensor.is_contiguous() and tensor.storage_offset() == 0
            and tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size())
