"""Reading and writing Hugging Face checkpoint folders, without ever unpickling code.

Reading checks each safetensors header against the file before loading it
(``safetensors_check``), reads ``pytorch_model*.bin`` with ``weights_only=True``, and refuses a
floating-point weight with no finite value at all: each as one line naming the file or tensor."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from llm_modules.registry import ConfigError
from llm_modules.training.integrity import check_finite, load_verified
from llm_modules.training.safetensors_check import load_safetensors


def read_hf_config(path: str | Path) -> dict[str, Any]:
    file = Path(path) / "config.json"
    if not file.is_file():
        raise ConfigError(f"{path}: no config.json here; point at a Hugging Face model folder")
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"{file}: not valid JSON ({err})") from err


def read_hf_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a folder: model.safetensors, a sharded safetensors index, or pytorch_model.bin
    (loaded with ``weights_only=True``)."""
    folder = Path(path)
    shards = sorted(folder.glob("*.safetensors"))
    if shards:
        weights: dict[str, torch.Tensor] = {}
        for shard in shards:
            weights.update(load_safetensors(shard))
        check_finite(weights, str(path))
        return weights
    bins = sorted(folder.glob("pytorch_model*.bin"))
    if bins:
        weights = {}
        for b in bins:
            state = load_verified(b, what="weights file", check=False)
            if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
                raise ConfigError(f"weights file {str(b)!r} is not a state dict (names to tensors)")
            weights.update(state)
        check_finite(weights, str(path))
        return weights
    raise ConfigError(f"{path}: no *.safetensors or pytorch_model*.bin weights found")


def write_hf_checkpoint(path: str | Path, config: dict[str, Any], weights: dict[str, torch.Tensor]) -> Path:
    """Write config.json + model.safetensors. Files are written to a temporary folder first and moved
    into place only when complete, so a failure leaves whatever was at ``path`` untouched."""
    target = Path(path)
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target, prefix=".tmp-export-") as tmp:
        tensors = {k: v.detach().contiguous().cpu() for k, v in weights.items()}
        save_file(tensors, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
        Path(tmp, "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        for name in ("model.safetensors", "config.json"):
            os.replace(os.path.join(tmp, name), target / name)
    return target


