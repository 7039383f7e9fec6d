"""Training throughput and MFU of a preset on whatever device is present, on random tokens.

    python benchmarks/mfu.py                                    # llama-350m, seq 2048, bf16-mixed
    python benchmarks/mfu.py --batch-size 16 --compile          # bigger batch, torch.compile
    python benchmarks/mfu.py --preset llama-tiny --seq-len 128 --batch-size 4 --steps 5   # a CPU smoke run
    python benchmarks/mfu.py --preset llama-1b --batch-size 4  # a benchmarks/train_step.py config: no preset file

It trains ``--steps`` optimizer steps of ``CausalLM(preset)`` with the Lightning Trainer (so the
precision plugin, compile and checkpointing are the ones training uses) and reports the
ThroughputMonitor's figures over every step after the first ``--warmup`` ones: the same code
computes them as in a training run's metrics.csv, so the numbers agree. Random tokens: no data
is downloaded, and the data loader costs nothing next to the model.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import sys
import time
from pathlib import Path

import torch
import yaml
from torch.utils.data import DataLoader, Dataset


class RandomTokens(Dataset):
    """``length`` rows of ``seq_len`` uniformly random token ids (seeded, so runs repeat)."""

    def __init__(self, vocab_size: int, seq_len: int, length: int):
        generator = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, vocab_size, (length, seq_len), generator=generator)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i]}


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="llama-350m",
                        help="model preset (configs/models/NAME.yaml) or a benchmarks/train_step.py config (llama-1b)")
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=8, help="micro-batch per device")
    parser.add_argument("--accumulate", type=int, default=1, help="trainer.accumulate_grad_batches")
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps in all, warm-up included")
    parser.add_argument("--warmup", type=int, default=3, help="first optimizer steps left out of the figures")
    parser.add_argument("--precision", default="bf16-mixed", help="trainer.precision")
    parser.add_argument("--attention", default="sdpa", help="attention backend (llm-modules registry)")
    parser.add_argument("--compile", action="store_true", help="model.memory.compile: true")
    parser.add_argument("--activation-checkpointing", default=False, type=yaml.safe_load,
                        help='model.memory.activation_checkpointing: true, "every:N", "[0, 2]", ...')
    parser.add_argument("--peak-tflops", type=float, default=None, help="override the per-device peak")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here as JSON")
    args = parser.parse_args(argv)
    if args.steps <= args.warmup:
        parser.error(f"--steps ({args.steps}) must exceed --warmup ({args.warmup}) to leave steps to time")
    return args


def model_for(name: str, seq_len: int):
    """A shipped preset, or else a named config of ``benchmarks/train_step.py``: sizes such as
    ``llama-1b`` (TinyLlama-1.1B's shape) are benchmark shapes, not presets a user trains, so they
    are defined once there. An unknown name is the preset lookup's error (it lists the presets)."""
    from llm_modules import ModelConfig
    from llm_modules.config import preset_names

    if name not in preset_names():
        train_step = sys.modules.get("train_step")
        if train_step is None:  # by path: benchmarks/ is not put on sys.path for one module
            spec = importlib.util.spec_from_file_location("train_step", Path(__file__).with_name("train_step.py"))
            train_step = sys.modules["train_step"] = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(train_step)
        if name in train_step.CONFIGS:
            return train_step.model_config(train_step.CONFIGS[name], seq_len)
    return ModelConfig.from_preset(name)


def run(args: argparse.Namespace) -> dict:
    import lightning as L

    from llm_modules import CausalLM
    from llm_modules.training.memory import MemoryConfig
    from llm_modules.training.optim import OptimConfig
    from llm_modules.training.precision import announce
    from llm_modules.training.throughput import ThroughputMonitor

    announce(args.precision, "auto")
    preset = model_for(args.preset, args.seq_len)
    config = preset.replace(attention=args.attention, max_seq_len=max(preset.max_seq_len, args.seq_len))
    memory = MemoryConfig(compile=bool(args.compile), activation_checkpointing=args.activation_checkpointing)
    torch.manual_seed(0)
    lm = CausalLM(config, optim=OptimConfig(warmup_steps=0, max_steps=args.steps), memory=memory)
    rows = args.batch_size * args.accumulate * args.steps
    loader = DataLoader(RandomTokens(config.vocab_size, args.seq_len, rows), batch_size=args.batch_size)
    monitor = ThroughputMonitor(peak_tflops=args.peak_tflops, window=args.steps, warmup_steps=args.warmup)
    trainer = L.Trainer(
        accelerator="auto", devices=1, precision=args.precision, max_steps=args.steps,
        accumulate_grad_batches=args.accumulate, gradient_clip_val=1.0, callbacks=[monitor],
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    trainer.fit(lm, loader)
    device = lm.device
    results = {
        "preset": args.preset, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "precision": str(trainer.precision), "seq_len": args.seq_len, "batch_size": args.batch_size,
        "accumulate": args.accumulate, "steps_timed": args.steps - args.warmup, "attention": args.attention,
        "parameters": lm.num_parameters(), "peak_tflops": monitor.peak / 1e12 if monitor.peak else None,
        "tokens_per_s": monitor.last["perf/tokens_per_s"],
        "flops_per_token": monitor.last["perf/flops_per_token"],
        "tflops_per_s": monitor.last["perf/tflops_per_s"],
        "mfu": monitor.last.get("perf/mfu"),
        "final_loss": float(trainer.callback_metrics["train/loss"]),
        "wall_s": time.perf_counter() - start,
    }
    if device.type == "cuda":
        results["peak_memory_gb"] = torch.cuda.max_memory_allocated(device) / 1e9
    return results


def report(results: dict) -> str:
    mfu = "n/a (no peak figure for this device)" if results["mfu"] is None else f"{100 * results['mfu']:.1f}%"
    peak = "n/a" if results["peak_tflops"] is None else f"{results['peak_tflops']:.4g}"
    lines = [
        (f"{results['preset']} ({results['parameters']:,} parameters) on {results['device']}, {results['precision']}, "
         f"seq {results['seq_len']} x batch {results['batch_size']} x accumulate {results['accumulate']}, "
         f"attention {results['attention']}; {results['steps_timed']} steps timed"),
        f"tokens/s          {results['tokens_per_s']:,.0f}",
        f"FLOPs/token       {results['flops_per_token']:.4g}",
        f"achieved TFLOP/s  {results['tflops_per_s']:.4g}  (peak {peak})",
        f"MFU               {mfu}",
        f"final train loss  {results['final_loss']:.3f}",
    ]
    if "peak_memory_gb" in results:
        lines.append(f"peak memory       {results['peak_memory_gb']:.1f} GB")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from llm_modules.registry import ConfigError

    try:
        results = run(args)
    except ConfigError as err:
        print(f"mfu.py: error: {err}", file=sys.stderr)
        return 2
    print(report(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
