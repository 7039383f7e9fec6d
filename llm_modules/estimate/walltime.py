"""Wall time of a run at a given MFU on a named GPU, from the datasheet peaks that
``training.model_flops`` holds and ``training.throughput`` measures MFU against (so a planned MFU and a logged ``perf/mfu`` agree)."""

from __future__ import annotations

from dataclasses import dataclass

from llm_modules.registry import ConfigError


@dataclass(frozen=True)
class WallTime:
    gpu: str  # the datasheet row's name
    mode: str  # the math mode the precision runs in (bf16, fp16, tf32, fp32)
    peak_flops: float  # per device, dense
    mfu: float
    devices: int
    seconds: float

    def as_dict(self) -> dict:
        return {"gpu": self.gpu, "mode": self.mode, "peak_flops": self.peak_flops, "mfu": self.mfu,
                "devices": self.devices, "seconds": self.seconds, "hours": self.seconds / 3600,
                "days": self.seconds / 86400}


def gpu_names() -> list[str]:
    from llm_modules.training.model_flops import PEAKS

    return [peak.name for _, peak in PEAKS]


def wall_time(flops: float, gpu: str, precision: str, mfu: float, devices: int) -> WallTime:
    """Seconds to run ``flops`` model FLOPs on ``devices`` GPUs named ``gpu`` at ``mfu``."""
    from llm_modules.training.model_flops import lookup_gpu, math_mode

    if not 0 < mfu <= 1:
        raise ConfigError(f"--mfu must be in (0, 1], e.g. 0.4; got {mfu}")
    peak = lookup_gpu(gpu)
    if peak is None:
        raise ConfigError(f"--gpu {gpu!r} is not in the peak-FLOPs table; choose one of {', '.join(gpu_names())}")
    mode = math_mode(precision)
    value = getattr(peak, mode, None)
    if value is None:
        raise ConfigError(f"{peak.name} has no {mode} tensor cores for --precision {precision}; "
                          "choose another precision (e.g. 16-mixed) or GPU")
    seconds = flops / (devices * value * 1e12 * mfu)
    return WallTime(peak.name, mode, value * 1e12, mfu, devices, seconds)
