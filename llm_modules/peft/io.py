"""Adapter-only files: the method's tensors in safetensors, its spec and the base config as metadata.

A fine-tuned adapter is a few megabytes beside a base model of gigabytes, so it is shipped on
its own. The file says how to rebuild itself (``describe()`` of the method, JSON in the
metadata) and which base it was trained on (the base ``ModelConfig`` as JSON), so loading it onto
a fresh base needs only the path, and loading it onto the wrong base is refused rather than
producing a model that runs and is quietly wrong. Pure torch + safetensors: no Lightning.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

import llm_modules.integrity as integrity
from llm_modules.atomic_files import replacing
from llm_modules.peft.base import (
    PeftMethod,
    applied_peft,
    apply_peft,
    build_peft,
    peft_state_dict,
)
from llm_modules.registry import ConfigError
from llm_modules.safetensors_check import check_header

FORMAT = "llm-modules-peft"
FORMAT_VERSION = "1"
ADAPTER_FILE = "adapter.safetensors"
#: config fields that change no weight's shape or meaning (run-time choices), not compared on load
RUNTIME_FIELDS = frozenset({
    "attention", "dropout", "attention_dropout", "plugins", "init_std", "embedding_grad_scale", "max_seq_len",
    "pad_token_id", "bos_token_id", "eos_token_id",
})


def adapter_path(path: str | os.PathLike) -> Path:
    """``path`` itself, or ``path/adapter.safetensors`` when ``path`` is a directory."""
    path = Path(path)
    return path / ADAPTER_FILE if path.is_dir() else path


def config_dict(config: Any) -> dict[str, Any] | None:
    """A base config as plain data: a mapping, a ``ModelConfig`` (``to_dict``) or a dataclass."""
    if config is None:
        return None
    if isinstance(config, Mapping):
        return dict(config)
    if callable(getattr(config, "to_dict", None)):
        return dict(config.to_dict())
    if dataclasses.is_dataclass(config):
        return dataclasses.asdict(config)
    raise TypeError(f"base_config must be a mapping or a ModelConfig; got {type(config).__name__}")


def _plain(value: Any) -> Any:
    """JSON round trip, so tuples and lists (and other JSON-equal forms) compare equal."""
    return json.loads(json.dumps(value, sort_keys=True))


def save_adapter(path: str | os.PathLike, model: nn.Module, method: PeftMethod, base_config: Any = None) -> Path:
    """Write the method's tensors and metadata to ``path`` (a file, or a directory to hold
    ``adapter.safetensors``) atomically: a crash mid-write leaves any previous file intact."""
    if method.is_merged(model):
        raise ConfigError(f"peft {method.name!r} is merged into the base weights; unmerge it before saving the adapter")
    tensors = {k: v.detach().cpu().contiguous() for k, v in peft_state_dict(model, method).items()}
    if not tensors:
        raise ConfigError(f"peft {method.name!r}: the model holds none of the method's tensors; was it unloaded?")
    metadata = {"format": FORMAT, "format_version": FORMAT_VERSION, "peft": json.dumps(_plain(method.describe()))}
    metadata[integrity.KEY] = json.dumps(integrity.digest(tensors))  # verified by read_adapter
    config = config_dict(base_config if base_config is not None else getattr(model, "config", None))
    if config is not None:
        metadata["base_config"] = json.dumps(_plain(config))
    target = adapter_path(path)
    with replacing(target) as tmp:  # mode 0644 under umask 022, like any new file
        save_file(tensors, str(tmp), metadata=metadata)
    return target


def read_adapter(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any] | None]:
    """``(tensors, peft spec, base config or None)`` of an adapter file, checking its format."""
    target = adapter_path(path)
    if not target.is_file():
        raise FileNotFoundError(f"no adapter file at {target}")
    metadata = check_header(target).get("__metadata__") or {}  # one line for a lying header, before reading
    if metadata.get("format") != FORMAT or "peft" not in metadata:
        raise ConfigError(f"{target} is not an llm-modules adapter file (no '{FORMAT}' metadata)")
    try:
        with safe_open(str(target), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118  (safe_open is not a dict)
    except Exception as err:  # SafetensorError: what the header check cannot see
        raise ConfigError(f"adapter {target} cannot be read: {str(err).splitlines()[0] if str(err) else err!r}") from None
    if integrity.KEY in metadata:  # older adapter files have none: unverified
        integrity.verify(tensors, target, json.loads(metadata[integrity.KEY]))
    base = json.loads(metadata["base_config"]) if "base_config" in metadata else None
    return tensors, json.loads(metadata["peft"]), base


def config_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """``field: file value vs model value`` for fields both configs hold that affect the weights."""
    saved, current = _plain(dict(saved)), _plain(dict(current))
    keys = sorted((set(saved) & set(current)) - RUNTIME_FIELDS)
    return [f"{k}: {saved[k]!r} (adapter) vs {current[k]!r} (model)" for k in keys if saved[k] != current[k]]


def _method_for(model: nn.Module, spec: Any) -> PeftMethod:
    """The model's method matching ``spec`` if it has one, else ``spec`` applied to the model."""
    wanted = _plain(build_peft(spec).describe())
    for method in applied_peft(model):
        if _plain(method.describe()) == wanted:
            return method
        if method.name == wanted["name"]:
            raise ConfigError(
                f"the model already has peft {method.name!r} with other options ({method.describe()}) than the "
                f"adapter file ({wanted}); load the adapter into a fresh base model"
            )
    return apply_peft(model, spec)


def load_adapter(
    path: str | os.PathLike, model: nn.Module, *, base_config: Any = None, method: Any = None
) -> PeftMethod:
    """Load an adapter file into ``model``, adding its method first if the model lacks it.

    ``base_config`` (default: ``model.config``) is compared with the config stored in the file;
    a difference in any weight-relevant field is refused. ``method`` overrides the stored spec
    (e.g. ``QLoRA.as_lora()`` to put a qlora adapter on the float base); the tensors must still
    fit it exactly. Returns the method.
    """
    target = adapter_path(path)
    tensors, spec, saved_config = read_adapter(target)
    current = config_dict(base_config if base_config is not None else getattr(model, "config", None))
    if saved_config is not None and current is not None:
        diffs = config_differences(saved_config, current)
        if diffs:
            raise ConfigError(
                f"adapter {target} was trained on a different base model: {'; '.join(diffs)}; "
                "load it onto the base model it was trained on"
            )
    applied = _method_for(model, method if method is not None else spec)
    if applied.is_merged(model):
        raise ConfigError(f"peft {applied.name!r} is merged into the model's weights; unmerge before loading an adapter")
    expected = applied.added_keys
    missing, unexpected = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
    if missing or unexpected:
        parts = [f"missing {len(missing)} (e.g. {missing[:3]})"] if missing else []
        parts += [f"unexpected {len(unexpected)} (e.g. {unexpected[:3]})"] if unexpected else []
        raise ConfigError(f"adapter {target} does not fit peft {applied.name!r} on this model: {', '.join(parts)} keys")
    own = model.state_dict()
    wrong = [f"{k}: {tuple(v.shape)} in file vs {tuple(own[k].shape)}" for k, v in tensors.items() if v.shape != own[k].shape]
    if wrong:
        raise ConfigError(f"adapter {target} has tensors of other shapes than the model: {'; '.join(wrong[:3])}")
    model.load_state_dict(tensors, strict=False)
    return applied
