"""Optimizer and learning-rate schedule, from plain data (the LLM recipe's defaults).

Defaults follow the common LLM pretraining recipe (GPT-3, LLaMA): AdamW with betas (0.9, 0.95),
eps 1e-8, weight decay 0.1 on matrices only, linear warmup then cosine decay to 10% of the peak.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from torch import nn

from llm_modules.registry import ConfigError

SCHEDULES = ("cosine", "linear", "constant", "inverse_sqrt")
OPTIMIZERS = ("adamw", "adafactor")


@dataclass
class OptimConfig:
    """How the model is optimized. ``max_steps`` None means: the trainer's estimated total steps."""

    optimizer: str = "adamw"
    lr: float = 3e-4
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    schedule: str = "cosine"
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    max_steps: int | None = None
    #: AdamW's fused kernel (one pass over each tensor instead of about ten): ``null`` uses it when
    #: torch has it for every parameter (plain CPU/CUDA floating tensors, not sharded DTensors);
    #: ``false`` keeps torch's default implementation.
    fused: bool | None = None

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optim.optimizer must be one of {', '.join(OPTIMIZERS)}; got {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"optim.schedule must be one of {', '.join(SCHEDULES)}; got {self.schedule!r}")
        if self.fused is not None and not isinstance(self.fused, bool):
            raise ConfigError(f"optim.fused must be true, false or null (automatic); got {self.fused!r}")
        if self.lr <= 0:
            raise ConfigError(f"optim.lr must be positive; got {self.lr}")
        if self.warmup_steps < 0:
            raise ConfigError(f"optim.warmup_steps must be >= 0; got {self.warmup_steps}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(f"optim.min_lr_ratio must be in [0, 1]; got {self.min_lr_ratio}")


def is_decayed(name: str, param: nn.Parameter) -> bool:
    """Weight decay applies to weight matrices only: not to norms, biases or embedding tables."""
    leaf = name.rsplit(".", 1)[-1]
    in_embedding = ".embed." in f".{name}" or name.startswith("embed.") or ".position." in name
    # FSDP flattens parameters into 1-D shards; training.parallel.remember_shapes kept the real shape.
    ndim = len(getattr(param, "original_shape", param.shape))
    return ndim >= 2 and leaf == "weight" and not in_embedding


def parameter_groups(named: Iterable[tuple[str, nn.Parameter]], weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    seen: set[int] = set()
    for name, p in named:
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (decay if is_decayed(name, p) else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(named: Iterable[tuple[str, nn.Parameter]], cfg: OptimConfig,
                    trainer=None) -> torch.optim.Optimizer:
    """The optimizer of ``cfg`` over ``named`` parameters; ``trainer`` (when there is one) decides
    with the parameters whether ``fused: null`` fuses (``fused_adamw_fits``, ``trainer_allows_fused``)."""
    groups = parameter_groups(named, cfg.weight_decay)
    if cfg.optimizer == "adafactor":
        return torch.optim.Adafactor(groups, lr=cfg.lr)
    params = [p for group in groups for p in group["params"]]
    fused = cfg.fused
    if fused is None:
        fused = fused_adamw_fits(params) and (trainer is None or trainer_allows_fused(trainer))
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, **({"fused": True} if fused else {}))


def trainer_allows_fused(trainer) -> bool:
    """Whether the Trainer's precision and strategy take a fused optimizer as they are set.

    A fused optimizer unscales gradients itself, so Lightning's AMP plugin (``16-mixed``,
    ``bf16-mixed``) refuses gradient clipping with it, and DeepSpeed owns its optimizer step; the
    automatic choice keeps torch's default there and fuses under the plain precisions (``32-true``,
    ``bf16-true``, ...) of single-device, DDP and FSDP runs. ``optim.fused: true`` forces it."""
    from lightning.pytorch.plugins.precision import DoublePrecision, HalfPrecision, Precision
    from lightning.pytorch.strategies import DeepSpeedStrategy

    plugin = getattr(trainer, "precision_plugin", None)
    if isinstance(getattr(trainer, "strategy", None), DeepSpeedStrategy):
        return False
    return type(plugin) in (Precision, HalfPrecision, DoublePrecision)


#: what torch's fused AdamW kernel takes
FUSED_DEVICES = ("cpu", "cuda")
FUSED_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)


def fused_adamw_fits(params: list[torch.Tensor]) -> bool:
    """Whether AdamW's fused kernel serves these parameters: plain tensors (not DTensors, whose
    sharded optimizers go through torch's default path) of floating dtypes on one CPU or CUDA
    device type. On the CPU it is the difference between one pass per tensor and about ten (the
    default there is the per-tensor loop): for a 17M-parameter model about 40 ms a step instead of
    about 500 ms on two cores (``benchmarks/train_step.py``). Same update up to float rounding."""
    if not params:
        return False
    kinds = {p.device.type for p in params}
    return (
        len(kinds) == 1 and kinds <= set(FUSED_DEVICES)
        and all(type(p) in (torch.Tensor, nn.Parameter) and p.dtype in FUSED_DTYPES for p in params)
    )


def lr_multiplier(cfg: OptimConfig, total_steps: int) -> Callable[[int], float]:
    """The schedule as a function of the step: a multiplier of the peak learning rate."""
    warmup, floor = cfg.warmup_steps, cfg.min_lr_ratio
    decay_steps = max(1, total_steps - warmup)

    def multiplier(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if cfg.schedule == "constant":
            return 1.0
        if cfg.schedule == "inverse_sqrt":
            return math.sqrt(max(warmup, 1) / max(step, 1))
        progress = min(1.0, (step - warmup) / decay_steps)
        if cfg.schedule == "linear":
            return floor + (1.0 - floor) * (1.0 - progress)
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return multiplier


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_multiplier(cfg, total_steps))
