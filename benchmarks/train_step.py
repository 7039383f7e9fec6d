"""Training-step throughput of a named config: ours against LitGPT, in the same run.

    python benchmarks/train_step.py                                    # cpu-llama: the CPU benchmark
    python benchmarks/train_step.py --config cpu-llama --rounds 12 --json train_step.json
    python benchmarks/train_step.py --config llama-350m                # on a GPU: bf16-mixed, seq 2048
    python benchmarks/train_step.py --config tiny --rounds 2           # a smoke run (seconds)

What is timed, per runner, is one optimizer step on a fixed random batch:

- ``ours``: ``CausalLM.compute_loss`` (what ``training_step`` computes), ``backward``, the optimizer
  that ``configure_optimizers`` builds (``training.optim.build_optimizer``: AdamW, fused where torch
  has it) and ``zero_grad``; the same code ``llm-modules fit`` runs, minus Lightning's loop.
- ``ours-trainer`` (``--trainer``): the real thing, ``lightning.Trainer.fit`` on the same batch with
  everything ``fit`` does per step (logging, the stability guard, the gradient norm), timed between
  consecutive ``on_train_batch_end`` calls; shows what the loop around the step costs.
- ``litgpt``: ``litgpt.GPT`` built from a ``litgpt.Config`` of the same architecture, trained the
  way LitGPT's ``pretrain`` trains it: ``torch.optim.AdamW`` (fused only on CUDA, as ``pretrain``
  asks for), ``F.cross_entropy`` over every position. ``litgpt-fused-adamw`` gives it the fused
  AdamW as well, so the optimizer is the same on both sides. Skipped, with the reason, when
  ``litgpt`` is not importable (``pip install litgpt==0.5.13 --no-deps``).
- ``matmul`` (CPU): ``training.model_flops.measure_matmul_flops``: square fp32 ``F.linear`` products
  with the same thread count, the CPU's achievable peak against which MFU is reported. On a GPU the
  peak is the datasheet's dense figure for the precision.

The runners take turns for ``--rounds`` rounds (the order rotates every round) so that a machine
shared with other work slows them alike; best and median are reported, and LitGPT against ours both
as best step over best step and as the median over rounds of the ratio within a round (the steady
figure when the machine's speed drifts: ``per_round_speedup``). Model FLOPs per token are
``training.model_flops.flops_per_token``: 6 x the parameters other than the input embedding (the
untied head included) + 12 x layers x d_model x sequence length for attention (PaLM's formula; the
causal mask does not halve it). Peak memory: the most live tensor bytes during one step
(``torch.profiler`` allocation records on CPU, ``max_memory_allocated`` on CUDA) on top of what
lives across steps (weights and optimizer state); ours is compared with the memory estimator's
peak for the same run (``llm_modules.estimate``, as ``llm-modules estimate`` reports it).

On CPU the process keeps freed memory for reuse (``retain_freed_cpu_memory``; ``--no-retain-memory``
turns that off): it applies to every runner alike, as it is process-wide.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

LLAMA = {"norm": "rmsnorm", "activation": "swiglu", "position": "rope", "attention": "sdpa", "bias": False,
         "tie_embeddings": False, "residual": "pre"}


@dataclass
class Config:
    """A named benchmark: the model (ModelConfig fields or a preset), the batch, the precision."""

    model: dict
    batch_size: int
    seq_len: int
    precision: str = "32-true"
    device: str = "cpu"
    threads: int | None = None
    preset: str | None = None
    note: str = ""
    extra: dict = field(default_factory=dict)


CONFIGS: dict[str, Config] = {
    # The CPU benchmark: LLaMA-style, d_model 384, 6 layers, 6 heads, d_ff 1024, vocab 8192,
    # batch 8 x 256 tokens, fp32, AdamW, 2 threads.
    "cpu-llama": Config({**LLAMA, "vocab_size": 8192, "d_model": 384, "n_layers": 6, "n_heads": 6, "n_kv_heads": 6,
                         "d_ff": 1024, "max_seq_len": 256}, batch_size=8, seq_len=256, threads=2,
                        note="LLaMA-style d384 x 6 layers, vocab 8192, fp32"),
    # A smoke-test size: seconds on any CPU.
    "tiny": Config({**LLAMA, "vocab_size": 512, "d_model": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 4,
                    "d_ff": 128, "max_seq_len": 32}, batch_size=2, seq_len=32, threads=2, note="smoke test"),
    # GPU presets: bf16-mixed at sequence 2048.
    "llama-350m": Config({}, preset="llama-350m", batch_size=8, seq_len=2048, precision="bf16-mixed", device="cuda",
                         note="configs/models/llama-350m.yaml"),
    "llama-1b": Config({**LLAMA, "vocab_size": 32000, "d_model": 2048, "n_layers": 22, "n_heads": 32,
                        "n_kv_heads": 4, "d_ff": 5632, "max_seq_len": 2048, "norm_eps": 1e-5},
                       batch_size=4, seq_len=2048, precision="bf16-mixed", device="cuda",
                       note="TinyLlama-1.1B's shape (GQA 32/4)"),
}


def parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="cpu-llama", choices=sorted(CONFIGS))
    parser.add_argument("--rounds", type=int, default=8, help="rounds of interleaved measurements")
    parser.add_argument("--steps", type=int, default=1, help="timed steps per runner per round")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per runner first")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--seq-len", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (CPU; default: the config's)")
    parser.add_argument("--device", default=None, help="override the config's device")
    parser.add_argument("--precision", default=None, help="override the config's precision (a Lightning flag)")
    parser.add_argument("--trainer", action="store_true", help="also time Lightning's Trainer.fit loop")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile'd models (both sides)")
    parser.add_argument("--no-litgpt", action="store_true", help="leave LitGPT out")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    parser.add_argument("--no-retain-memory", action="store_true",
                        help="CPU: leave glibc's malloc at its defaults (freed blocks go back to the system)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    return parser.parse_args(argv)


# ---- the runners -------------------------------------------------------------------------------------------


@dataclass
class Runner:
    name: str
    step: Callable[[], None]
    times: list[float] = field(default_factory=list)
    peak_memory: int | None = None
    skipped: str | None = None
    note: str = ""
    #: bytes of the tensors that live across steps (weights, optimizer state), for the whole peak
    resident_bytes: Callable[[], int] | None = None


def model_config(cfg: Config, seq_len: int):
    from llm_modules import ModelConfig

    if cfg.preset:
        return ModelConfig.from_preset(cfg.preset, max_seq_len=max(seq_len, 1))
    return ModelConfig(**{**cfg.model, "max_seq_len": max(cfg.model.get("max_seq_len", 0), seq_len)})


def batch_for(vocab: int, batch: int, seq: int, device) -> torch.Tensor:
    """(batch, seq + 1) random tokens: inputs are the first seq, targets the last seq."""
    return torch.randint(0, vocab, (batch, seq + 1), generator=torch.Generator().manual_seed(0)).to(device)


def autocast_for(precision: str, device: torch.device):
    if "mixed" in precision:
        dtype = torch.bfloat16 if precision.startswith("bf16") else torch.float16
        return torch.autocast(device.type, dtype=dtype)
    return torch.autocast(device.type, enabled=False)


def true_dtype(precision: str) -> torch.dtype | None:
    return {"bf16-true": torch.bfloat16, "16-true": torch.float16, "64-true": torch.float64}.get(precision)


def ours(cfg, tokens: torch.Tensor, precision: str, device, compile_model: bool = False) -> Runner:
    from llm_modules import CausalLM
    from llm_modules.training.optim import build_optimizer

    torch.manual_seed(0)
    lm = CausalLM(cfg)
    if true_dtype(precision):
        lm = lm.to(true_dtype(precision))
    lm = lm.to(device)
    if compile_model:
        lm.model.compile()
    optimizer = build_optimizer(lm.named_parameters(), lm.optim)
    batch = {"input_ids": tokens[:, :-1], "labels": tokens[:, 1:]}
    scaler = torch.amp.GradScaler(device.type) if precision.startswith("16-mixed") else None

    def step():
        with autocast_for(precision, device):
            loss = lm.compute_loss(batch)["loss"]
        (scaler.scale(loss) if scaler else loss).backward()
        scaler.step(optimizer) if scaler else optimizer.step()
        if scaler:
            scaler.update()
        optimizer.zero_grad(set_to_none=True)

    fused = optimizer.param_groups[0].get("fused")
    return Runner("ours" + ("-compiled" if compile_model else ""), step,
                  note=f"AdamW {'fused' if fused else 'default'}",
                  resident_bytes=lambda: resident_tensor_bytes(lm, optimizer))


def resident_tensor_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Bytes of what lives across steps: the weights and the optimizer's state, each storage once."""
    tensors = [*model.parameters(), *(t for state in optimizer.state.values() for t in state.values()
                                      if isinstance(t, torch.Tensor))]
    storages = {(t.untyped_storage().data_ptr(), t.device): t.untyped_storage().nbytes() for t in tensors}
    return sum(storages.values())


def estimated_peak(cfg, precision: str, batch_size: int, seq_len: int, device: torch.device) -> int:
    """The memory estimator's peak for one step of this run (``llm_modules.estimate``)."""
    from llm_modules.estimate.memory import Setup, estimate_memory
    from llm_modules.estimate.params import count

    setup = Setup(precision=precision, batch_size=batch_size, seq_len=seq_len, device=device.type)
    return int(estimate_memory(cfg, "causal", count(cfg), setup).peak)


def litgpt_config(cfg, seq_len: int):
    """The litgpt.Config of the same architecture, or a reason why there is none."""
    import litgpt

    from llm_modules.registry import split_spec

    norm, norm_options = split_spec(cfg.norm, "norm")
    position, position_options = split_spec(cfg.position, "position")
    activation, _ = split_spec(cfg.activation, "activation")
    if (norm, activation, position, cfg.residual) != ("rmsnorm", "swiglu", "rope", "pre") or cfg.tie_embeddings:
        raise ValueError("LitGPT is compared on LLaMA-style configs only (rmsnorm, swiglu, rope, pre-norm, untied)")
    return litgpt.Config(
        n_embd=cfg.d_model, n_layer=cfg.n_layers, n_head=cfg.n_heads, n_query_groups=cfg.kv_heads,
        head_size=cfg.dim_per_head, intermediate_size=cfg.d_ff, padded_vocab_size=cfg.vocab_size,
        vocab_size=cfg.vocab_size, block_size=seq_len, bias=cfg.bias, norm_class_name="RMSNorm",
        norm_eps=norm_options.get("eps", cfg.norm_eps), mlp_class_name="LLaMAMLP", rotary_percentage=1.0,
        rope_base=int(position_options.get("theta", 10000)), parallel_residual=False,
    )


def litgpt_runner(cfg, tokens: torch.Tensor, precision: str, device, fused_adamw: bool,
                  compile_model: bool = False) -> Runner:
    import litgpt

    torch.manual_seed(0)
    model = litgpt.GPT(litgpt_config(cfg, tokens.shape[1] - 1))
    if true_dtype(precision):
        model = model.to(true_dtype(precision))
    model = model.to(device)
    if compile_model:
        model = torch.compile(model)
    # LitGPT's pretrain: AdamW(..., fused=fabric.device.type == "cuda")
    fused = fused_adamw or device.type == "cuda"
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1,
                                  **({"fused": True} if fused else {}))
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    scaler = torch.amp.GradScaler(device.type) if precision.startswith("16-mixed") else None

    def step():
        with autocast_for(precision, device):
            logits = model(inputs)
            loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
        (scaler.scale(loss) if scaler else loss).backward()
        scaler.step(optimizer) if scaler else optimizer.step()
        if scaler:
            scaler.update()
        optimizer.zero_grad(set_to_none=True)

    name = "litgpt" + ("-fused-adamw" if fused_adamw and device.type != "cuda" else "")
    return Runner(name + ("-compiled" if compile_model else ""), step,
                  note=f"litgpt {litgpt.__version__ if hasattr(litgpt, '__version__') else ''}, "
                       f"AdamW {'fused' if fused else 'default'}".replace(" ,", ","),
                  resident_bytes=lambda: resident_tensor_bytes(model, optimizer))


class _StepClock:
    """A Lightning callback that records the wall time between consecutive optimizer steps."""

    def __init__(self):
        self.times: list[float] = []
        self._last: float | None = None

    def callback(self):
        from lightning.pytorch.callbacks import Callback

        clock = self

        class Clock(Callback):
            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                if pl_module.device.type == "cuda":
                    torch.cuda.synchronize()
                now = time.perf_counter()
                if clock._last is not None:
                    clock.times.append(now - clock._last)
                clock._last = now

            def on_train_start(self, trainer, pl_module):
                clock._last = None

        return Clock()


def trainer_runner(cfg, tokens: torch.Tensor, precision: str, device, steps: int) -> Runner:
    """Lightning's Trainer.fit: each call fits a fresh Trainer for ``steps + 1`` steps (the first
    only starts the clock) on the same module, so optimizer state is rebuilt per call, as the
    Trainer builds it."""
    import lightning as L

    from llm_modules import CausalLM

    torch.manual_seed(0)
    lm = CausalLM(cfg, optim={"warmup_steps": 0})
    rows = [{"input_ids": tokens[i, :-1].cpu(), "labels": tokens[i, 1:].cpu()} for i in range(tokens.shape[0])]
    loader = torch.utils.data.DataLoader(rows * (steps + 1), batch_size=tokens.shape[0])
    clock = _StepClock()
    callback = clock.callback()
    runner = Runner("ours-trainer", lambda: None, note="Lightning Trainer.fit, default callbacks off")

    def step():
        trainer = L.Trainer(
            accelerator="gpu" if device.type == "cuda" else "cpu", devices=1, precision=precision,
            max_steps=steps + 1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0, callbacks=[callback],
        )
        clock.times.clear()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer.fit(lm, loader)
        return list(clock.times)

    runner.step = step
    return runner


# ---- measuring ---------------------------------------------------------------------------------------------


def peak_memory(runner: Runner, device) -> int:
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        runner.step()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    from llm_modules.training.peak_memory import cpu_peak_allocated

    return cpu_peak_allocated(runner.step)


def timed(runner: Runner, steps: int, device) -> list[float]:
    if runner.name == "ours-trainer":
        return runner.step()
    out = []
    for _ in range(steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        runner.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        out.append(time.perf_counter() - start)
    return out


def retain_freed_cpu_memory() -> bool:
    """The CLI's CPU allocator setting, where this checkout has it (older ones, measured for a
    before-and-after comparison, do not)."""
    try:
        from llm_modules.training.host_memory import retain_freed_cpu_memory as retain
    except ImportError:
        return False
    return retain()


def run(args) -> dict:
    from llm_modules.training.model_flops import flops_per_token, gpu_peak_flops, measure_matmul_flops

    bench = CONFIGS[args.config]
    device = torch.device(args.device or bench.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"train_step.py: config {args.config!r} runs on CUDA and this machine has no GPU; "
                         "pick a CPU config (--config cpu-llama) or pass --device cpu")
    precision = args.precision or bench.precision
    threads = args.threads or bench.threads
    if device.type == "cpu" and threads:
        torch.set_num_threads(threads)
    retained = device.type == "cpu" and not args.no_retain_memory and retain_freed_cpu_memory()
    batch_size, seq_len = args.batch_size or bench.batch_size, args.seq_len or bench.seq_len
    cfg = model_config(bench, seq_len)
    tokens = batch_for(cfg.vocab_size, batch_size, seq_len, device)

    runners = [ours(cfg, tokens, precision, device)]
    skipped: dict[str, str] = {}
    if args.trainer:
        runners.append(trainer_runner(cfg, tokens, precision, device, args.steps))
    if not args.no_litgpt:
        try:
            runners.append(litgpt_runner(cfg, tokens, precision, device, fused_adamw=False))
            if device.type != "cuda":
                runners.append(litgpt_runner(cfg, tokens, precision, device, fused_adamw=True))
        except ImportError as err:
            skipped["litgpt"] = f"litgpt is not importable ({err}); pip install litgpt==0.5.13 --no-deps"
        except ValueError as err:
            skipped["litgpt"] = str(err)
    if args.compile:
        runners.append(ours(cfg, tokens, precision, device, compile_model=True))
        if "litgpt" not in skipped and not args.no_litgpt:
            runners.append(litgpt_runner(cfg, tokens, precision, device, fused_adamw=False, compile_model=True))

    for runner in runners:
        for _ in range(max(args.warmup, 1) if runner.name != "ours-trainer" else 1):
            timed(runner, 1, device)  # the first steps allocate optimizer state, compile, warm caches
    if not args.no_memory:
        for runner in runners:
            if runner.name != "ours-trainer":
                # what a step adds, plus what lives across steps: the whole peak, as estimated
                runner.peak_memory = peak_memory(runner, device)
                if runner.resident_bytes is not None:
                    runner.peak_memory += runner.resident_bytes()

    matmul: list[float] = []
    if device.type == "cpu":
        dtype = {"bf16-true": torch.bfloat16, "bf16-mixed": torch.bfloat16}.get(precision, torch.float32)
        measure_peak = lambda: matmul.append(measure_matmul_flops(dtype, device, budget_s=0.25))  # noqa: E731
    else:
        measure_peak = lambda: None  # noqa: E731
    for round_ in range(args.rounds):
        order = runners[round_ % len(runners):] + runners[: round_ % len(runners)]
        measure_peak()
        for runner in order:
            runner.times.extend(timed(runner, args.steps, device))
    measure_peak()

    tokens_per_step = batch_size * seq_len
    flops_step = flops_per_token(cfg, seq_len) * tokens_per_step
    if device.type == "cpu":
        peak = max(matmul)
        peak_source = f"measured fp32 matmul, {threads or torch.get_num_threads()} threads (best of {len(matmul)})"
    else:
        peak = gpu_peak_flops(torch.cuda.get_device_name(device), precision)
        peak_source = "datasheet dense peak" if peak else "no datasheet figure for this GPU"

    results = {
        "config": args.config, "note": bench.note, "device": device_name(device), "threads": threads,
        "precision": precision, "batch_size": batch_size, "seq_len": seq_len, "tokens_per_step": tokens_per_step,
        "model": cfg.to_dict(), "flops_per_token": flops_per_token(cfg, seq_len), "flops_per_step": flops_step,
        "peak_flops": peak, "peak_source": peak_source,
        "matmul_flops": {"best": max(matmul), "median": statistics.median(matmul), "all": matmul} if matmul else None,
        "estimated_peak_memory_bytes": estimated_peak(cfg, precision, batch_size, seq_len, device),
        "rounds": args.rounds, "retain_freed_memory": bool(retained), "torch": torch.__version__,
        "runners": {}, "skipped": skipped,
    }
    for runner in runners:
        best, median = min(runner.times), statistics.median(runner.times)
        results["runners"][runner.name] = {
            "step_s": {"best": best, "median": median, "all": runner.times},
            "tokens_per_s": {"best": tokens_per_step / best, "median": tokens_per_step / median},
            "model_flops_per_s": {"best": flops_step / best, "median": flops_step / median},
            "share_of_peak": ({"best": flops_step / best / peak,
                               "median": flops_step / median / (statistics.median(matmul) if matmul else peak)}
                              if peak else None),
            "peak_memory_bytes": runner.peak_memory, "note": runner.note,
        }
    base = results["runners"]["ours"]["step_s"]
    for name, row in results["runners"].items():
        if name.startswith("litgpt"):
            other = row["step_s"]
            row["ours_speedup"] = {"best": other["best"] / base["best"], "median": other["median"] / base["median"],
                                   "per_round": per_round_speedup(base["all"], other["all"])}
    return results


def per_round_speedup(ours: list[float], other: list[float]) -> float:
    """The median, over rounds, of the other runner's step time over ours in the same round.

    The runners of a round run back to back, so a change in the machine's speed between rounds (a
    shared VM's neighbours, the clock) moves both of a round's times alike and cancels in its
    ratio; best against best instead compares two different rounds, and one lucky round of either
    side moves it."""
    return statistics.median(theirs / mine for mine, theirs in zip(ours, other))


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}), {torch.get_num_threads()} threads"


def report(results: dict) -> str:
    lines = [f"{results['config']}: {results['note']}; {results['device']}, {results['precision']}, "
             f"batch {results['batch_size']} x {results['seq_len']} tokens, {results['rounds']} rounds",
             f"model FLOPs/token {results['flops_per_token'] / 1e6:.2f} M  (step: {results['flops_per_step'] / 1e9:.1f} GFLOP)"]
    if results["matmul_flops"]:
        mm = results["matmul_flops"]
        lines.append(f"matmul rate       best {mm['best'] / 1e9:.1f} GFLOP/s, median {mm['median'] / 1e9:.1f}")
    elif results["peak_flops"]:
        lines.append(f"peak              {results['peak_flops'] / 1e12:.1f} TFLOP/s ({results['peak_source']})")
    unit, scale = ("GFLOP/s", 1e9) if results["device"].startswith("CPU") else ("TFLOP/s", 1e12)
    lines.append(f"{'runner':<26}{'step s best/median':>20}{'tokens/s best':>15}{unit + ' best':>14}"
                 f"{'share of peak':>15}{'peak mem MB':>13}{'ours vs it':>20}")
    for name, row in results["runners"].items():
        share, memory, speedup = row["share_of_peak"], row["peak_memory_bytes"], row.get("ours_speedup")
        share_text = "{:.1f}% ({:.0f}%)".format(100 * share["best"], 100 * share["median"]) if share else "n/a"
        memory_text = "{:.0f}".format(memory / 1e6) if memory else "-"
        speedup_text = "{:.3f}x ({:.3f}x)".format(speedup["best"], speedup["per_round"]) if speedup else ""
        lines.append(
            f"{name:<26}{row['step_s']['best']:>10.3f}/{row['step_s']['median']:<9.3f}"
            f"{row['tokens_per_s']['best']:>15,.0f}{row['model_flops_per_s']['best'] / scale:>14.1f}"
            f"{share_text:>15}{memory_text:>13}{speedup_text:>20}"
        )
    for name, why in results["skipped"].items():
        lines.append(f"{name:<26}skipped: {why}")
    ours_memory, estimate = results["runners"]["ours"]["peak_memory_bytes"], results["estimated_peak_memory_bytes"]
    if ours_memory:
        lines.append(f"peak memory of ours: measured {ours_memory / 1e6:.0f} MB, estimator {estimate / 1e6:.0f} MB "
                     f"(measured / estimate {ours_memory / estimate:.3f})")
    lines.append("share of peak: best step against the best matmul rate (median step against the median rate)")
    if any("ours_speedup" in row for row in results["runners"].values()):
        lines.append("ours vs it: its best step over ours (in brackets: the median over rounds of its step over ours "
                     "in the same round)")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse(argv)
    import logging

    import lightning.pytorch  # noqa: F401  (sets its loggers' level on import; quiet them after)

    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    results = run(args)
    print(report(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
