"""Generation throughput: new tokens per second of ``llm_modules.generation.generate`` with its KV cache.

    python benchmarks/generate.py                                   # cpu-llama's model, CPU, 2 threads
    python benchmarks/generate.py --config llama-350m               # on a GPU, bf16
    python benchmarks/generate.py --config tiny --rounds 1 --json gen.json

The model is a named config of ``benchmarks/train_step.py`` with random weights (the speed does not
depend on the weights); each row of ``--batch-size`` random prompts of ``--prompt-len`` tokens is
continued greedily for exactly ``--new-tokens`` tokens (no EOS). Reported: the prompt's forward
(prefill, tokens/s over the prompt tokens) and decoding (new tokens/s over the batch, prefill
excluded), best and median over ``--rounds``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from train_step import CONFIGS, device_name, model_config  # noqa: E402


def parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="cpu-llama", choices=sorted(CONFIGS))
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                        help="default: float32 on CPU, bfloat16 on CUDA")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None)
    return parser.parse_args(argv)


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
    prompts = torch.randint(0, cfg.vocab_size, (args.batch_size, args.prompt_len),
                            generator=torch.Generator().manual_seed(0)).to(device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def timed(fn) -> float:
        sync()
        start = time.perf_counter()
        fn()
        sync()
        return time.perf_counter() - start

    generate = lambda n: lm.generate(prompts, max_new_tokens=n, eos_token_id=[])  # noqa: E731
    generate(2)  # warm-up
    prefill, total = [], []
    for _ in range(args.rounds):
        prefill.append(timed(lambda: generate(1)))
        total.append(timed(lambda: generate(args.new_tokens)))
    decode = [max(t - p, 1e-9) for t, p in zip(total, prefill)]
    new = args.batch_size * (args.new_tokens - 1)  # the first new token comes with the prefill
    prompt_tokens = args.batch_size * args.prompt_len
    return {
        "config": args.config, "device": device_name(device), "dtype": str(dtype).replace("torch.", ""),
        "batch_size": args.batch_size, "prompt_len": args.prompt_len, "new_tokens": args.new_tokens,
        "parameters": lm.num_parameters(),
        "prefill_tokens_per_s": {"best": prompt_tokens / min(prefill), "median": prompt_tokens / statistics.median(prefill)},
        "decode_tokens_per_s": {"best": new / min(decode), "median": new / statistics.median(decode)},
        "seconds": {"prefill": prefill, "total": total},
    }


def report(r: dict) -> str:
    return "\n".join([
        f"{r['config']} ({r['parameters']:,} parameters) on {r['device']}, {r['dtype']}, batch {r['batch_size']}, "
        f"prompt {r['prompt_len']}, {r['new_tokens']} new tokens (greedy, KV cache)",
        f"prefill  {r['prefill_tokens_per_s']['best']:>10,.0f} tokens/s best  ({r['prefill_tokens_per_s']['median']:,.0f} median)",
        f"decode   {r['decode_tokens_per_s']['best']:>10,.0f} tokens/s best  ({r['decode_tokens_per_s']['median']:,.0f} median)",
    ])


def main(argv=None) -> int:
    args = parse(argv)
    results = run(args)
    print(report(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
