"""Greedy decoding speed: ``llm_modules.generation.generate`` against transformers' ``generate``,
same model, same prompts, same tokens, in the same run.

    python benchmarks/generate.py                                   # cpu-llama's model, CPU, 2 threads, batch 1 and 8
    python benchmarks/generate.py --rounds 7 --json generate.json
    python benchmarks/generate.py --config llama-350m --batch-size 8 # on a GPU, bf16
    python benchmarks/generate.py --config tiny --rounds 1 --new-tokens 8   # a smoke run (seconds)

The model is a named config of ``benchmarks/train_step.py`` with random weights (the speed does not
depend on the weights). Runners:

- ``ours``: ``CausalLM.generate`` (greedy, KV cache, no EOS: ``eos_token_id=[]``).
- ``transformers``: the same weights exported with ``llm_modules.to_hf`` and loaded with
  ``AutoModelForCausalLM.from_pretrained`` (its default attention, sdpa, and its default cache);
  ``generate(do_sample=False, max_new_tokens=n)`` with its EOS turned off, so both write exactly
  ``--new-tokens`` tokens. Skipped, with the reason, when the model has no Hugging Face family.

For each ``--batch-size`` a batch of random prompts of ``--prompt-len`` tokens is continued for
``--new-tokens`` tokens. What is timed is one whole ``generate`` call (prefill included: what a
user waits for); reported is new tokens/s (batch x new tokens / seconds), best and median over
``--rounds``, and ours over transformers' (best over best, median over median). The runners take
turns, the order alternating every round, so that a shared machine slows both alike; the script
stops with an error if the two ever produce different token ids. Both run with the same
``torch.set_num_threads`` (``--threads``, default the config's: 2 for the CPU configs).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from train_step import CONFIGS, device_name, model_config  # noqa: E402


def parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="cpu-llama", choices=sorted(CONFIGS))
    parser.add_argument("--batch-size", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runners", nargs="+", default=["ours", "transformers"], choices=["ours", "transformers"])
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                        help="default: float32 on CPU, bfloat16 on CUDA")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (CPU; default: the config's)")
    parser.add_argument("--json", type=Path, default=None)
    return parser.parse_args(argv)


def ours_runner(lm, new_tokens: int):
    def run(prompts: torch.Tensor) -> torch.Tensor:
        return lm.generate(prompts, max_new_tokens=new_tokens, eos_token_id=[])
    return run


def transformers_runner(lm, new_tokens: int, device, dtype):
    """transformers' ``generate`` on our weights, or the reason it cannot run (a string)."""
    try:
        import transformers
        from llm_modules import to_hf
        from llm_modules.registry import ConfigError
    except ImportError as err:
        return f"transformers is not importable ({err})"
    with tempfile.TemporaryDirectory() as folder:
        try:
            to_hf(lm, folder)
        except ConfigError as err:
            return f"no Hugging Face family for this model ({str(err).splitlines()[0]})"
        hf = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(device).eval()
    hf.generation_config.eos_token_id = None  # no early stop: exactly new_tokens tokens
    hf.generation_config.pad_token_id = 0  # (only silences the "no pad token" notice)

    def run(prompts: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return hf.generate(prompts, attention_mask=torch.ones_like(prompts), do_sample=False,
                               max_new_tokens=new_tokens, min_new_tokens=new_tokens)
    return run


def run(args) -> dict:
    from llm_modules import CausalLM

    bench = CONFIGS[args.config]
    device = torch.device(args.device or bench.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"generate.py: config {args.config!r} runs on CUDA and there is no GPU here; pass --device cpu")
    if device.type == "cpu" and (args.threads or bench.threads):
        torch.set_num_threads(args.threads or bench.threads)
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    cfg = model_config(bench, args.prompt_len + args.new_tokens)
    torch.manual_seed(0)
    lm = CausalLM(cfg).to(device=device, dtype=dtype).eval()
    runners, skipped = {}, {}
    for name in args.runners:
        made = ours_runner(lm, args.new_tokens) if name == "ours" else \
            transformers_runner(lm, args.new_tokens, device, dtype)
        (skipped.__setitem__(name, made) if isinstance(made, str) else runners.__setitem__(name, made))

    def timed(fn, prompts) -> tuple[float, torch.Tensor]:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = fn(prompts)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start, out

    load_before = load_average()
    results = []
    for batch in args.batch_size:
        prompts = torch.randint(0, cfg.vocab_size, (batch, args.prompt_len),
                                generator=torch.Generator().manual_seed(batch)).to(device)
        outputs = {name: fn(prompts) for name, fn in runners.items()}  # warm-up (and the token check)
        seconds: dict[str, list[float]] = {name: [] for name in runners}
        names = list(runners)
        for round_ in range(args.rounds):
            for name in names if round_ % 2 == 0 else names[::-1]:
                elapsed, out = timed(runners[name], prompts)
                seconds[name].append(elapsed)
                outputs[name] = out
        check_same_tokens(outputs, args.prompt_len + args.new_tokens)
        new = batch * args.new_tokens
        row = {"batch_size": batch, "runners": {}}
        for name, times in seconds.items():
            row["runners"][name] = {
                "tokens_per_s": {"best": new / min(times), "median": new / statistics.median(times)},
                "seconds": times,
            }
        if "ours" in row["runners"] and "transformers" in row["runners"]:
            ours, theirs = row["runners"]["ours"]["tokens_per_s"], row["runners"]["transformers"]["tokens_per_s"]
            row["ours_vs_transformers"] = {k: ours[k] / theirs[k] for k in ("best", "median")}
        results.append(row)
    return {
        "config": args.config, "device": device_name(device), "dtype": str(dtype).replace("torch.", ""),
        "prompt_len": args.prompt_len, "new_tokens": args.new_tokens, "rounds": args.rounds,
        "parameters": lm.num_parameters(), "load": {"before": load_before, "after": load_average()}, "skipped": skipped, "results": results,
    }


def check_same_tokens(outputs: dict[str, torch.Tensor], length: int) -> None:
    """Every runner wrote the same ids, and exactly ``length`` per row (prompt included)."""
    for name, out in outputs.items():
        if out.shape[1] != length:
            raise SystemExit(f"generate.py: {name} returned {out.shape[1]} tokens per row, expected {length}")
    first, *others = outputs.items()
    for name, out in others:
        if not torch.equal(out.cpu(), first[1].cpu()):
            row, col = (out.cpu() != first[1].cpu()).nonzero()[0].tolist()
            raise SystemExit(f"generate.py: {name} and {first[0]} generated different tokens "
                             f"(first at row {row}, position {col})")


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def report(r: dict) -> str:
    lines = [f"{r['config']} ({r['parameters']:,} parameters) on {r['device']}, {r['dtype']}; prompt {r['prompt_len']}, "
             f"{r['new_tokens']} new tokens, greedy, {r['rounds']} rounds; load average (1, 5, 15 min) "
             f"{r['load']['before']} before, {r['load']['after']} after"]
    lines += [f"{name}: skipped, {why}" for name, why in r["skipped"].items()]
    lines.append(f"{'batch':>5}  {'runner':<14}{'new tokens/s best':>18}{'median':>10}{'ours vs it':>18}")
    for row in r["results"]:
        ratio = row.get("ours_vs_transformers")
        for name, figures in row["runners"].items():
            versus = f"{ratio['best']:.2f}x ({ratio['median']:.2f}x)" if ratio and name == "transformers" else ""
            tps = figures["tokens_per_s"]
            lines.append(f"{row['batch_size']:>5}  {name:<14}{tps['best']:>18,.1f}{tps['median']:>10,.1f}{versus:>18}")
    lines.append("identical token ids: " + ("yes" if len(r["results"][0]["runners"]) > 1 else "(one runner)"))
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse(argv)
    results = run(args)
    print(report(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
