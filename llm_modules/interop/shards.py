"""Which safetensors files hold a model's weights, and how a large model is split into shards: the
names and index that transformers writes and reads.

Reading (``weight_files``) decides like transformers' ``from_pretrained``:

- ``model.safetensors`` present: that file alone.
- else ``model.safetensors.index.json``: exactly the shards its ``weight_map`` names, each a plain file
  name inside the folder. Other ``*.safetensors`` beside them are ignored, as transformers ignores
  them: Mistral's repositories ship ``consolidated.safetensors`` (the same weights under other names)
  beside the shards, a killed copy or an older export leaves a shard of another model, and a folder
  may hold an adapter. Reading them too would load two models' tensors into one.
- else other ``*.safetensors`` files alone are refused, naming them: transformers would not load them
  either, and which of them make a model is not ours to guess.

The index is checked against the shards' headers before a byte of tensor data is read: a listed
shard that is missing, a tensor the index places in a shard that does not hold it, a tensor held by
two shards (or named twice in the index) and a tensor a shard holds that the index does not list are
each one line naming the file and the tensor.

Writing (``plan``) splits the way ``huggingface_hub.split_torch_state_dict_into_shards`` does: tensors
in order, a new shard when the next tensor would take the current one over ``max_shard_size`` (a tensor
larger than that gets a shard of its own); one shard is a plain ``model.safetensors`` and no index,
several are ``model-00001-of-0000N.safetensors`` plus ``model.safetensors.index.json``
(``metadata.total_size``: the tensors' bytes; ``weight_map``: tensor name -> shard).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from llm_modules.registry import ConfigError
from llm_modules.safetensors_check import check_header

WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
SHARD = re.compile(r"model-(\d{5})-of-(\d{5})\.safetensors")
#: transformers' ``save_pretrained`` default: a model of up to 50 GB is one file
DEFAULT_MAX_SHARD_SIZE = "50GB"
#: size units as huggingface_hub reads them (decimal), and their binary forms
UNITS = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_size(value: int | str, what: str = "max_shard_size") -> int:
    """Bytes of ``value``: an int, a string of digits, or a number with a unit (``500MB``, ``2GB``,
    ``1.5GiB``; KB/MB/GB/TB are decimal as in huggingface_hub). ConfigError naming ``what`` otherwise."""
    if isinstance(value, bool):
        value = str(value)
    if isinstance(value, int):
        size = value
    else:
        text = str(value).strip().replace(" ", "")
        found = re.fullmatch(r"(\d+(?:\.\d*)?)([A-Za-z]*)", text)
        unit = found.group(2).upper() if found else ""
        if not found or (unit and unit not in UNITS):
            raise ConfigError(f"{what}: {value!r} is not a size; give bytes (an integer) or a number with a unit, "
                              "e.g. 500MB, 2GB, 5GiB (units: KB, MB, GB, TB, KiB, MiB, GiB, TiB)")
        size = int(float(found.group(1)) * UNITS.get(unit, 1))
    if size <= 0:
        raise ConfigError(f"{what}: {value!r} is not a positive size; give e.g. 2GB")
    return size


def plan(weights: dict[str, torch.Tensor], max_shard_size: int | str) -> dict[str, list[str]]:
    """File name -> the tensor names it holds, in order (see the module docstring)."""
    limit = parse_size(max_shard_size)
    shards: list[list[str]] = []
    current: list[str] = []
    size = 0
    for name, tensor in weights.items():
        nbytes = tensor.numel() * tensor.element_size()
        if nbytes > limit:
            shards.append([name])
            continue
        if current and size + nbytes > limit:
            shards.append(current)
            current, size = [], 0
        current.append(name)
        size += nbytes
    if current or not shards:
        shards.append(current)
    if len(shards) == 1:
        return {WEIGHTS: shards[0]}
    return {f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors": names for i, names in enumerate(shards)}


def index_bytes(files: dict[str, list[str]], weights: dict[str, torch.Tensor]) -> bytes:
    """The ``model.safetensors.index.json`` of a plan, as transformers writes it."""
    total = sum(t.numel() * t.element_size() for t in weights.values())
    index = {"metadata": {"total_size": total},
             "weight_map": {name: file for file, names in files.items() for name in names}}
    return (json.dumps(index, indent=2, sort_keys=True) + "\n").encode()


def is_weights_name(name: str) -> bool:
    """Whether ``name`` is one of the weight files this module writes (and transformers reads)."""
    return name in (WEIGHTS, INDEX) or SHARD.fullmatch(name) is not None


def weight_files(folder: str | Path) -> list[Path] | None:
    """The safetensors files that hold the model of ``folder`` (see the module docstring), headers
    and index checked; None when the folder has no safetensors file at all."""
    folder = Path(folder)
    if (folder / WEIGHTS).is_file():
        return [folder / WEIGHTS]
    if (folder / INDEX).is_file():
        return _indexed(folder)
    others = sorted(p.name for p in folder.glob("*.safetensors"))
    if others:
        raise ConfigError(f"{folder}: holds {', '.join(others[:4])} but neither {WEIGHTS} nor {INDEX}; transformers "
                          f"reads only those: rename a one-file model to {WEIGHTS}, or add the index of the shards")
    return None


def _indexed(folder: Path) -> list[Path]:
    where = str(folder / INDEX)
    weight_map = _weight_map(folder / INDEX)
    by_file: dict[str, set[str]] = {}
    for name, file in weight_map.items():
        by_file.setdefault(file, set()).add(name)
    paths = []
    held_by: dict[str, str] = {}
    for file in sorted(by_file):
        if Path(file).name != file or file in (".", ".."):
            raise ConfigError(f"{where}: shard {file!r} is not a file name inside the folder; an index names its "
                              "shards by file name alone")
        path = folder / file
        if not path.is_file():
            raise ConfigError(f"{where}: shard {file!r} is missing (the index places {len(by_file[file])} tensor(s) "
                              f"in it, e.g. {sorted(by_file[file])[0]!r}); the download or copy is incomplete")
        held = {name for name in check_header(path) if name != "__metadata__"}
        for name in sorted(held):
            if name in held_by:
                raise ConfigError(f"{where}: tensor {name!r} is held by two shards, {held_by[name]} and {file}; the "
                                  "folder mixes two models' shards: download it again")
            held_by[name] = file
        lost = sorted(by_file[file] - held)
        if lost:
            raise ConfigError(f"{where}: places tensor {lost[0]!r} in {file}, which does not hold it; the shard and "
                              "the index are of different models: download the folder again")
        paths.append(path)
    unlisted = sorted(set(held_by) - set(weight_map))
    if unlisted:
        raise ConfigError(f"{where}: shard {held_by[unlisted[0]]} holds tensor {unlisted[0]!r}, which the index does "
                          "not list; the shard and the index are of different models: download the folder again")
    return paths


def _weight_map(path: Path) -> dict[str, str]:
    """The ``weight_map`` of an index, refusing a tensor named twice (JSON keeps the last silently)."""
    twice: list[str] = []

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        for key, value in items:
            if key in seen:
                twice.append(key)
            seen[key] = value
        return seen

    try:
        index = json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=pairs)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"{path}: not valid JSON ({err}); the index is damaged: download it again") from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise ConfigError(f"{path}: has no weight_map of tensor names to shard files; it is not a safetensors index")
    if twice:
        raise ConfigError(f"{path}: names {twice[0]!r} twice; which shard holds that tensor is ambiguous: "
                          "download the index again")
    return weight_map
