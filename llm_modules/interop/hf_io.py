"""Reading and writing Hugging Face checkpoint folders, without ever unpickling code.

Reading checks each safetensors header against the file before loading it
(``safetensors_check``) and a sharded folder's index against its shards (``shards``), reads
``pytorch_model*.bin`` with ``weights_only=True``, and refuses a floating-point weight with no
finite value at all: each as one line naming the file or tensor."""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import secrets
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from llm_modules.atomic_files import fsync_file, plain_mode, restore_mode
from llm_modules.integrity import check_finite, load_verified
from llm_modules.interop.shards import DEFAULT_MAX_SHARD_SIZE, INDEX, index_bytes, is_weights_name, plan, weight_files
from llm_modules.registry import ConfigError
from llm_modules.safetensors_check import load_safetensors


def read_hf_config(path: str | Path) -> dict[str, Any]:
    file = Path(path) / "config.json"
    if not file.is_file():
        raise ConfigError(f"{path}: no config.json here; point at a Hugging Face model folder")
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"{file}: not valid JSON ({err})") from err


def read_hf_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a folder: model.safetensors, the shards a ``model.safetensors.index.json``
    names (``shards.weight_files`` decides which files, like transformers), or pytorch_model*.bin
    (loaded with ``weights_only=True``).

    Tensors are memory-mapped, not read (safetensors always, .bin when it is torch's zip format): a
    page of the file is read when a tensor's data is first used, and the finiteness check looks at
    one element per tensor unless that one is not finite, so reading holds no copy of the weights
    (``hf.from_hf`` assigns them to the model)."""
    folder = Path(path)
    files = weight_files(folder)
    if files:
        weights: dict[str, torch.Tensor] = {}
        for file in files:
            weights.update(load_safetensors(file))
        check_finite(weights, str(path))
        return weights
    bins = sorted(folder.glob("pytorch_model*.bin"))
    if bins:
        weights = {}
        for b in bins:
            state = load_verified(b, what="weights file", check=False, mmap=True)
            if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
                raise ConfigError(f"weights file {str(b)!r} is not a state dict (names to tensors)")
            weights.update(state)
        check_finite(weights, str(path))
        return weights
    raise ConfigError(f"{path}: no *.safetensors or pytorch_model*.bin weights found")


#: The files of a model folder as this library writes them, by role. Writing a role replaces every
#: file of that role that was there: an older model's extra shards would load with the new weights,
#: an older tokenizer.json would win over a new tokenizer.model in transformers.
FOLDER_ROLES: dict[str, tuple[str, ...]] = {
    "config": ("config.json", "generation_config.json"),
    "weights": ("*.safetensors", "*.safetensors.index.json"),
    "tokenizer": ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"),
}
#: What else a model folder may hold that a rewrite leaves alone (a model card).
FOLDER_EXTRAS = ("README.md", "README")
STAGING_PREFIX = ".tmp-export-"


def role_of(name: str) -> str | None:
    """The role (``FOLDER_ROLES``) of a file name in a model folder, or None."""
    return next((role for role, patterns in FOLDER_ROLES.items()
                 if any(fnmatch.fnmatchcase(name, p) for p in patterns)), None)


def foreign_entries(folder: str | Path) -> list[str]:
    """The entries of ``folder`` that are not a model folder's files as written here (roles, model
    card, a killed export's staging folder): a folder with any is not ours to rewrite."""
    foreign = []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.is_dir(follow_symlinks=False):
            if not entry.name.startswith(STAGING_PREFIX):
                foreign.append(entry.name + "/")
        elif role_of(entry.name) is None and entry.name not in FOLDER_EXTRAS:
            foreign.append(entry.name)
    return foreign


def write_hf_checkpoint(path: str | Path, config: dict[str, Any], weights: dict[str, torch.Tensor],
                        files: dict[str, bytes] | None = None, prune: bool = False,
                        max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE) -> Path:
    """Write config.json + model.safetensors (and ``files``: name -> content, e.g. the tokenizer's).

    Weights larger than ``max_shard_size`` (bytes, or ``"2GB"``, ``"500MB"``) are written as shards
    ``model-00001-of-0000N.safetensors`` + ``model.safetensors.index.json`` (``shards.plan``). Weight
    files of those names that the new set does not hold are removed even without ``prune``: a stale
    ``model.safetensors`` would win over new shards in transformers, a stale shard or index would
    mix two models; files of other names (``adapter.safetensors``) are left alone.

    Everything is written into a staging folder inside ``path`` first and moved into place only when
    complete, so a failure leaves whatever was at ``path`` untouched (and no folder, if there was
    none). Files get the mode any new file gets (0644 under umask 022). Other files are left alone,
    unless ``prune``: then the files of each role written that the new set does not hold are removed
    (``FOLDER_ROLES``), for a caller that has checked the folder holds one model and nothing else
    (``llm-modules export/convert --overwrite``, ``cli.outputs``).
    """
    target = Path(path)
    created = [p for p in (target, *target.parents) if not p.exists()]  # folders to remove on failure
    target.mkdir(parents=True, exist_ok=True)
    staging = target / f"{STAGING_PREFIX}{secrets.token_hex(6)}"
    try:
        staging.mkdir()
        tensors = {k: v.detach().contiguous().cpu() for k, v in weights.items()}
        layout = plan(tensors, max_shard_size)
        for file, names in layout.items():
            save_file({name: tensors[name] for name in names}, str(staging / file), metadata={"format": "pt"})
        contents = {"config.json": (json.dumps(config, indent=2, sort_keys=True) + "\n").encode(),
                    **({INDEX: index_bytes(layout, tensors)} if len(layout) > 1 else {}), **(files or {})}
        for name, data in contents.items():
            (staging / name).write_bytes(data)
        mode = plain_mode(staging / "config.json")  # what open() gives: 0644 under umask 022
        written = sorted(os.listdir(staging))
        for name in written:
            restore_mode(staging / name, mode)  # safetensors writes 0600
            fsync_file(staging / name)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        with contextlib.suppress(OSError):
            for folder in created:  # deepest first; rmdir only removes empty ones
                folder.rmdir()
        raise
    for name in written:
        os.replace(staging / name, target / name)
    staging.rmdir()
    roles = {role_of(name) for name in written} - {None} if prune else set()
    for old in os.listdir(target):
        stale = role_of(old) in roles or is_weights_name(old)
        if old not in written and stale and (target / old).is_file():
            (target / old).unlink()
    return target
