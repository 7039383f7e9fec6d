"""Checks of the parsed ``trainer`` settings and ``--ckpt_path`` before anything is built.

Lightning refuses these itself, but deep inside ``Trainer.__init__`` or ``trainer.fit`` and as a
traceback (``max_steps=-5``, ``strategy='fdsp'``, ``accelerator='gpu'`` on a machine without one,
a plain ``torch.save(model.state_dict())`` file as a checkpoint). Here each is one line naming the
setting, the fix and, for names, the closest registered one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from llm_modules.registry import ConfigError, did_you_mean

GPU_ACCELERATORS = ("gpu", "cuda")
LIGHTNING_NAMES = ("last", "best", "hpc", "registry")  # ckpt_path values Lightning resolves itself


def check_trainer(trainer: Mapping[str, Any]) -> None:
    """Refuse trainer settings that Lightning would reject with a traceback (right after parsing:
    nothing is built yet)."""
    for key in ("max_steps", "max_epochs"):
        value = trainer.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value < -1:
            raise ConfigError(f"trainer.{key} {value}: give a positive number, or -1 for no limit")
    for key in ("accumulate_grad_batches", "log_every_n_steps"):
        value = trainer.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value < 1:
            raise ConfigError(f"trainer.{key} {value}: give a whole number of 1 or more")
    _check_strategy(trainer.get("strategy"))
    _check_accelerator_name(trainer.get("accelerator"))


def check_devices(trainer: Mapping[str, Any]) -> None:
    """Refuse GPUs asked for that the machine lacks. Called when Lightning refuses the trainer,
    after the model is built, so a model's own more specific refusal (QLoRA needs CUDA) comes first."""
    _check_gpus(trainer.get("accelerator"), trainer.get("devices"))


def _check_strategy(strategy: Any) -> None:
    if not isinstance(strategy, str) or strategy == "auto":
        return
    from lightning.pytorch.strategies import StrategyRegistry

    names = sorted(StrategyRegistry.available_strategies())
    if strategy not in names:
        listed = [n for n in names if "find_unused_parameters" not in n]  # variants of the listed ones
        raise ConfigError(f"trainer.strategy {strategy!r} is not a registered strategy{did_you_mean(strategy, listed)}; "
                          f"choices: auto, {', '.join(listed)} (or a class_path)")


def _check_accelerator_name(accelerator: Any) -> None:
    if not isinstance(accelerator, str) or accelerator == "auto":
        return
    from lightning.pytorch.accelerators import AcceleratorRegistry

    names = sorted({*AcceleratorRegistry.available_accelerators(), "gpu"})
    if accelerator not in names:
        raise ConfigError(f"trainer.accelerator {accelerator!r} is not known{did_you_mean(accelerator, names)}; "
                          f"choices: auto, {', '.join(names)}")


def _check_gpus(accelerator: Any, devices: Any) -> None:
    if accelerator not in GPU_ACCELERATORS:
        return
    import torch

    found = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if accelerator == "gpu" and not found and torch.backends.mps.is_available():
        return  # Apple GPU
    if not found:
        raise ConfigError(f"trainer.accelerator {accelerator!r}: no GPU found; use --trainer.accelerator cpu")
    if isinstance(devices, int) and not isinstance(devices, bool) and devices > found:
        raise ConfigError(f"trainer.devices {devices}: only {found} GPU(s) found; use --trainer.devices {found} "
                          "or fewer (-1: all)")


def check_checkpoint_file(path: Any) -> None:
    """``--ckpt_path FILE`` must exist and be a checkpoint Lightning can restore (``read_checkpoint``)."""
    if not isinstance(path, (str, Path)) or str(path) in LIGHTNING_NAMES or "://" in str(path):
        return  # 'last', 'best', ...: resolved and checked later; remote files: read by fsspec
    if not Path(path).exists():  # before the data is prepared for a run that could not start
        raise ConfigError(f"--ckpt_path {str(path)!r} does not exist; give a checkpoint file (e.g. "
                          "runs/llm/version_0/checkpoints/last.ckpt) or 'last'")
    if Path(path).is_dir():
        return  # a distributed-checkpoint folder: the strategy reads it
    read_checkpoint(path)


def read_checkpoint(path: str | Path) -> dict:
    """The checkpoint in ``--ckpt_path FILE`` (memory-mapped where it can be): loaded without unpickling
    and verified (``integrity.load_verified``), holding ``state_dict`` and the Lightning version, not a
    bare state dict. Every failure is one line."""
    from llm_modules.integrity import load_verified

    checkpoint = load_verified(path, what="--ckpt_path", mmap=True)
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint \
            or "pytorch-lightning_version" not in checkpoint:
        what = "a plain state dict" if isinstance(checkpoint, dict) else f"a {type(checkpoint).__name__}"
        raise ConfigError(f"--ckpt_path {str(path)!r} is not a Lightning checkpoint ({what}); give a .ckpt written by "
                          "llm-modules fit (or llm-modules convert from-hf)")
    return checkpoint
