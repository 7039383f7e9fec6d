"""Peak memory of each pipeline stage on CPU processes, against ``llm-modules estimate --pp``.

    python benchmarks/pipeline_memory.py                              # pp 2, 4 micro-batches, gpipe and 1f1b
    python benchmarks/pipeline_memory.py --pp 2 4 --microbatches 4 8 --json pipeline_memory.json

Starts ``pp`` processes (one thread each, gloo on 127.0.0.1), each one stage of a decoder-only LM
(LLaMA-style, d_model 256, 2 blocks per stage, vocabulary 8192: tens of MB of weights, optimizer
states and activations per stage) cut by the runtime's own balanced split
(``training.pipeline.split_blocks``), and runs ``--steps`` optimizer steps of
``training.pipeline.train_step`` (the trainer's AdamW from ``training.optim``, fp32) on random
tokens: every rank gets the whole batch of ``microbatches x microbatch-size`` rows, cut by the
schedule. Each rank measures the peak of CPU tensor memory that its stage's work allocated
(``training.peak_memory.cpu_peak_allocated``: the profiler's allocation records, from
materializing the stage's weights to the end of the last step, so weights, gradients, AdamW's
moments, activations, the schedule's receive buffers and temporaries all count), and the script
prints it beside the estimator's peak for that stage (``estimate.pipeline``, the figure
``llm-modules estimate --pp`` prints) with their ratio.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from _gloo_ranks import add_rank_arguments, run_ranks  # benchmarks/, the script's own folder, is on sys.path

MODEL = {"vocab_size": 8192, "d_model": 256, "n_heads": 4, "norm": "rmsnorm", "activation": "swiglu",
         "position": "rope", "attention": "sdpa", "bias": False, "tie_embeddings": False, "dropout": 0.0}


def model_config(args, pp: int):
    from llm_modules.config import ModelConfig

    return ModelConfig(**MODEL, n_layers=args.blocks_per_stage * pp, max_seq_len=args.seq)


def rank_main(args) -> None:
    """One rank: measure each (schedule, micro-batch count) run and write the rows to ``--out``."""
    import torch
    import torch.distributed as dist

    from llm_modules.empty_init import parameters_on_meta
    from llm_modules.nn.lm import DecoderLM
    from llm_modules.training.optim import OptimConfig, build_optimizer
    from llm_modules.training.peak_memory import cpu_peak_allocated
    from llm_modules.estimate.schedule_order import held_stages
    from llm_modules.training.pipeline import build_stages, pipeline_schedule, stages_per_rank, train_step

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(args.port))
    pp = args.pp[0]
    dist.init_process_group("gloo", rank=args.rank, world_size=pp)
    rows = []
    try:
        config = model_config(args, pp)
        for name in args.schedules:
            for m in args.microbatches:
                torch.manual_seed(0)
                virtual = stages_per_rank(name, None)
                held = held_stages(name, args.rank, pp, virtual)
                with parameters_on_meta():  # the stages' weights are allocated inside the measurement
                    stages = build_stages(DecoderLM(config), held, pp * virtual)
                generator = torch.Generator().manual_seed(1)
                ids = torch.randint(0, config.vocab_size, (m * args.microbatch_size, args.seq), generator=generator)
                targets = ids.roll(-1, 1)

                def work(stages=stages, ids=ids, targets=targets, name=name, m=m):
                    named = []
                    for stage in stages:
                        stage.to_empty(device="cpu")
                        with torch.no_grad():
                            for p in stage.parameters():
                                p.normal_(0, 0.02) if p.dim() > 1 else p.fill_(1.0)
                        named += list(stage.named_parameters())
                    optimizer = build_optimizer(named, OptimConfig())
                    schedule = pipeline_schedule(stages, name, m)
                    for _ in range(args.steps):
                        train_step(schedule, stages, optimizer, ids, targets)
                    dist.barrier()

                dist.barrier()
                measured = cpu_peak_allocated(work)
                rows.append({"pp": pp, "schedule": name, "microbatches": m, "stage": args.rank,
                             "blocks": [i for stage in stages for i in stage.blocks], "measured": measured})
        Path(args.out).write_text(json.dumps(rows))
    finally:
        dist.destroy_process_group()


def launch(args, pp: int) -> list[dict]:
    """Run the ranks as subprocesses of this script (``_gloo_ranks``); return every rank's rows."""
    forwarded = [
        "--pp", str(pp), "--steps", str(args.steps), "--seq", str(args.seq),
        "--microbatch-size", str(args.microbatch_size), "--blocks-per-stage", str(args.blocks_per_stage),
        "--schedules", *args.schedules, "--microbatches", *map(str, args.microbatches),
    ]
    return run_ranks(__file__, pp, forwarded, args.timeout)


def estimated(args, row: dict) -> dict:
    """The estimator's figures for the stage of ``row`` (as ``llm-modules estimate --pp`` computes them)."""
    from llm_modules.estimate.memory import Setup
    from llm_modules.estimate.pipeline import Pipeline, estimate_pipeline

    cfg = model_config(args, row["pp"])
    setup = Setup(precision="32-true", strategy="fsdp", batch_size=row["microbatches"] * args.microbatch_size,
                  seq_len=args.seq, device="cpu")  # fsdp: the pipeline's data-parallel strategy (one replica here)
    plan = estimate_pipeline(cfg, "causal", setup, Pipeline(row["pp"], row["schedule"], row["microbatches"]))
    return plan.ranks[row["stage"]].as_dict()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pp", type=int, nargs="+", default=[2])
    parser.add_argument("--schedules", nargs="+", default=["gpipe", "1f1b"])
    parser.add_argument("--microbatches", nargs="+", type=int, default=[4])
    parser.add_argument("--microbatch-size", type=int, default=4, help="rows per micro-batch")
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--blocks-per-stage", type=int, default=2, help="blocks per pipeline rank (default 2)")
    parser.add_argument("--steps", type=int, default=2, help="optimizer steps (2: AdamW's moments exist)")
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--json", type=Path, help="also write the rows here")
    add_rank_arguments(parser)
    args = parser.parse_args(argv)
    if args.rank is not None:
        rank_main(args)
        return
    rows = [row for pp in args.pp for row in launch(args, pp)]
    print(f"{'pp':>2} {'schedule':24} {'m':>3} {'rank':>4} {'blocks':>9} {'in flight':>9} {'estimate MB':>12} "
          f"{'measured MB':>12} {'est/meas':>9}")
    for row in sorted(rows, key=lambda r: (r["pp"], r["schedule"], r["microbatches"], r["stage"])):
        est = estimated(args, row)
        row["estimate"], row["estimate_detail"] = est["peak"], est
        row["in_flight"] = ",".join(str(n) for n in est["in_flight"].values())
        blocks = ",".join(f"{b[0]}-{b[-1]}" for b in est["blocks"])
        print(f"{row['pp']:>2} {row['schedule']:24} {row['microbatches']:>3} {row['stage']:>4} {blocks:>9} "
              f"{row['in_flight']:>9} {row['estimate'] / 1e6:>12.1f} {row['measured'] / 1e6:>12.1f} "
              f"{row['estimate'] / row['measured']:>9.3f}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
