"""Checks on ``trainer.precision`` before Lightning acts on it, with plain messages.

Lightning accepts 32-true, 16-mixed, bf16-mixed, bf16-true (and 16-true, 64-true) everywhere, and
FP8 through NVIDIA Transformer Engine as ``transformer-engine`` (bf16 weights) or
``transformer-engine-float16``. Two cases deserve a clearer word than Lightning gives:

- 16-mixed on a CPU: PyTorch has no fp16 autocast there, and Lightning quietly switches to
  bf16-mixed (one UserWarning among many). That changes the number format of the run, so we say it
  in one line, with how to silence it: ask for bf16-mixed.
- FP8 without Transformer Engine or an FP8 GPU (Ada or Hopper and later): Lightning fails on the
  import; we refuse earlier, naming the field and what is needed. FP8 is untested in this project's
  CPU test suite.
"""

from __future__ import annotations

import importlib.util
import logging
import warnings

import torch

from llm_modules.registry import ConfigError

log = logging.getLogger("llm_modules.precision")

FP8 = ("transformer-engine", "transformer-engine-float16")
ALIASES = {"16": "16-mixed", "bf16": "bf16-mixed", "32": "32-true", "64": "64-true"}


def normalize(precision) -> str:
    """Lightning's precision flag as its canonical string (``16`` -> ``16-mixed``)."""
    text = str(precision) if precision is not None else "32-true"
    return ALIASES.get(text, text)


def runs_on_cpu(accelerator) -> bool:
    """Whether Lightning will pick the CPU for this ``trainer.accelerator`` value."""
    name = str(accelerator or "auto").lower()
    if name == "cpu":
        return True
    if name == "auto":
        mps = getattr(torch.backends, "mps", None)
        return not torch.cuda.is_available() and not (mps is not None and mps.is_available())
    return False


def check_precision(precision, accelerator="auto") -> str | None:
    """Refuse what cannot run; return a one-line notice for what Lightning will change, else None."""
    flag = normalize(precision)
    if flag in FP8:
        if importlib.util.find_spec("transformer_engine") is None:
            raise ConfigError(
                f"trainer.precision={flag} (FP8) needs NVIDIA Transformer Engine, which is not installed "
                "(pip install transformer-engine[pytorch]) and an FP8 GPU (compute capability 8.9+: "
                "L4, L40S, RTX 4090, H100, H200); use trainer.precision: bf16-mixed otherwise"
            )
        if runs_on_cpu(accelerator) or not torch.cuda.is_available():
            raise ConfigError(
                f"trainer.precision={flag} (FP8) needs a CUDA GPU with FP8 tensor cores (compute capability "
                "8.9+: L4, L40S, RTX 4090, H100, H200); none is in use here; use trainer.precision: bf16-mixed"
            )
        capability = torch.cuda.get_device_capability()
        if capability < (8, 9):
            raise ConfigError(
                f"trainer.precision={flag} (FP8) needs compute capability 8.9+ (Ada, Hopper); "
                f"{torch.cuda.get_device_name()} is {capability[0]}.{capability[1]}; use trainer.precision: bf16-mixed"
            )
        return None
    if flag == "16-mixed" and runs_on_cpu(accelerator):
        return (
            "trainer.precision=16-mixed: PyTorch has no fp16 autocast on CPU, so Lightning trains in "
            "bf16-mixed instead (bfloat16 matmuls, float32 weights); set trainer.precision: bf16-mixed "
            "to ask for that and silence this line"
        )
    return None


def announce(precision, accelerator="auto") -> None:
    """``check_precision``, printing its notice once and dropping Lightning's vaguer duplicate."""
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    notice = check_precision(precision, accelerator)
    if notice:
        if getattr(rank_zero_only, "rank", 0) == 0:  # one line per run, not one per process
            log.warning(notice)
        warnings.filterwarnings("ignore", message=r".*AMP with fp16 is not supported on CPU.*")
