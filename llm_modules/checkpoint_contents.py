"""What an llm-modules checkpoint says about the model it holds, read from one place.

A checkpoint (``save_checkpoint``'s file or a Trainer's) stores each fact once:

- ``hyper_parameters``: the constructor arguments, plain data (``save_hyperparameters``): the
  architecture under ``config``, the class under ``_class_path``, optimizer, memory, stability,
  evaluation and fine-tuning options. LightningCLI rebuilds the module from them (``--ckpt_path``).
- ``model_kind``: the LM kind of the torch model (``CausalLM``...), which is not always the class
  (a DPO run's policy is a CausalLM), so that ``load_checkpoint`` knows what to rebuild.
- ``state_dict``, ``tokens_seen``, ``tokenizer``, the stability guard's and the fine-tuning entries.

Files written before this layout also carry the config under ``model_config``; the readers here
accept both, the new place first. This module imports no model, so the packages below ``models/``
(fine-tuning's base reader, the CLI's checks) read checkpoints without importing Lightning modules.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

import llm_modules.integrity as integrity
from llm_modules.registry import ConfigError

#: where older files kept a second copy of the config (read, never written)
LEGACY_CONFIG_KEY = "model_config"
KIND_KEY = "model_kind"
#: the stability guard's state (``training.stability``), which a model that does not train carries unchanged
STABILITY_KEY = "stability_state"


def read(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A checkpoint file as a dict: loaded without unpickling, its integrity record verified
    (``integrity.load_verified``), and holding a ``state_dict``."""
    checkpoint = integrity.load_verified(path, map_location)
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise ConfigError(f"checkpoint {str(Path(path))!r} has no state_dict; it is not a Lightning checkpoint")
    return checkpoint


def hyper_parameters(checkpoint: dict[str, Any]) -> dict[str, Any]:
    hparams = checkpoint.get("hyper_parameters")
    return dict(hparams) if isinstance(hparams, dict) else {}


def model_config(checkpoint: dict[str, Any]) -> dict[str, Any] | None:
    """The architecture as plain data (``ModelConfig.to_dict()``), or None when the file has none."""
    config = hyper_parameters(checkpoint).get("config")
    if not isinstance(config, dict):
        config = checkpoint.get(LEGACY_CONFIG_KEY)
    return dict(config) if isinstance(config, dict) else None


def model_kind(checkpoint: dict[str, Any]) -> str | None:
    """The LM kind the checkpoint's torch model is (``CausalLM``...), or None."""
    kind = checkpoint.get(KIND_KEY)
    return kind if isinstance(kind, str) and kind else None
