"""lm-eval requests per second: the llm-modules lm-eval model against lm-eval's own ``hf`` model on the
``to_hf`` export of the same model, on the CPU.

    python benchmarks/lm_eval_speed.py                     # ~4M-parameter LLaMA-style model, 2 threads
    python benchmarks/lm_eval_speed.py --d-model 384 --layers 6 --batch-size 32 --json speed.json

The model is a CausalLM with random weights (the speed does not depend on them) and a 2048-piece
SentencePiece tokenizer trained on the Python standard library's source, as the quickstart's. Requests
are made from that source too:

- ``loglikelihood``, multiple-choice style: ``--questions`` contexts of about 300 characters, each with
  4 continuations of about 40 characters (``--questions`` x 4 requests);
- ``generate_until``: ``--prompts`` contexts, greedy, ``max_gen_toks`` ``--new-tokens``, with a stop
  string the model does not produce (every row runs its full length).

Both models get the same ``--batch-size``; each measurement is the best of ``--rounds``, the two models
taking turns. The results are
checked to agree (log-likelihoods within 1e-4, the same greedy texts) before any figure is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--questions", type=int, default=40, help="multiple-choice contexts (4 requests each)")
    parser.add_argument("--prompts", type=int, default=24, help="generate_until requests")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--files", type=int, default=300, help="standard-library files to read (tokenizer, requests)")
    parser.add_argument("--json", type=Path, default=None)
    return parser.parse_args(argv)


def stdlib_texts(limit: int = 300) -> list[str]:
    """Source files of the Python standard library, in a fixed order."""
    root = Path(os.__file__).parent
    files = sorted(p for p in root.glob("*.py"))[:limit]
    return [p.read_text(encoding="utf-8", errors="replace") for p in files]


def build(folder: Path, args):
    """(our lm-eval model, lm-eval's hf model on the export)."""
    from lm_eval.models.huggingface import HFLM

    from llm_modules import CausalLM, to_hf
    from llm_modules.data.tokenizer import Tokenizer
    from llm_modules.evaluation.lm_eval_model import LLMModulesLM

    tokenizer = Tokenizer.train(iter(stdlib_texts(args.files)), vocab_size=2048, max_sentences=20_000)
    torch.manual_seed(0)
    lm = CausalLM(config=dict(vocab_size=2048, d_model=args.d_model, n_layers=args.layers, n_heads=4, n_kv_heads=4,
                              norm="rmsnorm", residual="pre", activation="swiglu", position="rope", bias=False,
                              tie_embeddings=False, max_seq_len=256)).eval()
    lm.tokenizer_bytes = tokenizer.to_bytes()
    to_hf(lm, folder)
    ours = LLMModulesLM(module=lm, batch_size=args.batch_size)
    hf = HFLM(pretrained=str(folder), batch_size=args.batch_size, device="cpu")
    return ours, hf, sum(p.numel() for p in lm.parameters())


def requests(args):
    from lm_eval.api.instance import Instance

    text = "".join(stdlib_texts(args.files)[:60])
    rng = random.Random(0)
    starts = lambda n, width: [rng.randrange(0, len(text) - width) for _ in range(n)]  # noqa: E731
    choice = [text[s:s + 40] for s in starts(4 * args.questions, 40)]
    mc = [Instance("loglikelihood", {}, (text[s:s + 300], choice[4 * q + k]), 4 * q + k)
          for q, s in enumerate(starts(args.questions, 300)) for k in range(4)]
    options = {"until": ["\u2603\u2603"], "max_gen_toks": args.new_tokens, "do_sample": False}
    gen = [Instance("generate_until", {}, (text[s:s + 200], dict(options)), i)
           for i, s in enumerate(starts(args.prompts, 200))]
    return mc, gen


def timed(calls, rounds: int):
    """Best seconds and last result of each call, the calls taking turns each round (a busy machine
    then slows both alike)."""
    best, out = [float("inf")] * len(calls), [None] * len(calls)
    for _ in range(rounds):
        for n, call in enumerate(calls):
            start = time.perf_counter()
            out[n] = call()
            best[n] = min(best[n], time.perf_counter() - start)
    return best, out


def main(argv=None) -> dict:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        ours, hf, params = build(Path(tmp) / "hf", args)
        mc, gen = requests(args)
        figures = {"parameters": params, "batch_size": args.batch_size, "threads": args.threads}
        for kind, reqs in (("loglikelihood", mc), ("generate_until", gen)):
            calls = [lambda lm=lm: getattr(lm, kind)(reqs, disable_tqdm=True) for lm in (ours, hf)]
            (ours_s, hf_s), (ours_out, hf_out) = timed(calls, args.rounds)
            if kind == "loglikelihood":
                worst = max(abs(a[0] - b[0]) for a, b in zip(ours_out, hf_out))
                assert worst < 1e-4 and [a[1] for a in ours_out] == [b[1] for b in hf_out], worst
            else:
                assert ours_out == hf_out, "greedy generations differ"
            figures[kind] = {"requests": len(reqs), "llm_modules_per_s": len(reqs) / ours_s,
                             "hf_per_s": len(reqs) / hf_s, "speedup": hf_s / ours_s}
            print(f"{kind:15s} {len(reqs):4d} requests  llm-modules {len(reqs) / ours_s:8.1f}/s  "
                  f"hf {len(reqs) / hf_s:8.1f}/s  x{hf_s / ours_s:.2f}")
    print(f"({params / 1e6:.1f}M parameters, batch size {args.batch_size}, {args.threads} threads, CPU)")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return figures


if __name__ == "__main__":
    main()
