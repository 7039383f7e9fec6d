"""Idle time per pipeline stage on CPU processes, against the bubble formula (p-1)/(m+p-1).

    python benchmarks/pipeline_bubble.py                                  # pp 2, m 2 4 8, gpipe and 1f1b
    python benchmarks/pipeline_bubble.py --schedules interleaved-1f1b interleaved-zero-bubble --microbatches 2 4 8
    python benchmarks/pipeline_bubble.py --pp 2 --microbatches 4 --schedules 1f1b --json bubble.json

Starts ``--pp`` processes (one thread each, gloo on 127.0.0.1), each one stage of the same
decoder-only LM cut into equal runs of blocks (``llm_modules.training.pipeline``), with a small
vocabulary so that the embedding and head add little to the first and last stage. Each rank times
its stage's compute, every ``forward_one_chunk`` and ``backward_one_chunk`` the schedule calls
(the loss on the last stage included in neither), and the wall time of whole ``schedule.step``
calls between two barriers, so every stage's wall is the pipeline's (no optimizer step); its idle
fraction is 1 - compute / wall. With
equal stages both GPipe and 1F1B leave each stage idle (p-1)/(m+p-1) of a step; measured and
expected figures are printed per stage. The formula leaves out sending activations between the
processes (gloo over loopback, a few ms per MB here), which is idle time too: the default of 6
blocks per rank makes it small against each micro-batch's compute (with 2, 1F1B at m 8 measured
1.2-1.4 x the formula; with 6, 1.03-1.12). The processes must have a core each: on a loaded machine
the idle time includes waiting for a core, and the figures say so by being larger.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from _gloo_ranks import add_rank_arguments, run_ranks  # benchmarks/, the script's own folder, is on sys.path

import torch



def expected_bubble(pp: int, microbatches: int, virtual: int = 1) -> float:
    """The idle fraction of each of ``pp`` equal ranks over ``microbatches`` micro-batches: the
    pipeline fills and drains in ``pp - 1`` steps of one stage's work, which is a ``virtual``-th of
    a rank's with interleaved stages, against ``microbatches`` such steps of work per stage:
    (p-1)/v / (m + (p-1)/v). Without interleaving that is (p-1)/(m+p-1)."""
    return (pp - 1) / virtual / (microbatches + (pp - 1) / virtual)


class BusyTime:
    """Seconds a rank's ``torch.distributed.pipelining`` stages spend in their forward and backward
    chunks (the backward split into input and weight gradients by the zero-bubble schedules included)."""

    def __init__(self, stages):
        self.by_kind = {"forward": 0.0, "backward": 0.0}
        methods = {"forward": ["forward_one_chunk"],
                   "backward": ["backward_one_chunk", "backward_weight_one_chunk"]}
        for stage in stages:
            for kind, names in methods.items():
                for name in names:
                    if hasattr(stage, name):
                        setattr(stage, name, self._timed(kind, getattr(stage, name)))

    @property
    def seconds(self) -> float:
        return sum(self.by_kind.values())

    def reset(self) -> None:
        self.by_kind = dict.fromkeys(self.by_kind, 0.0)

    def _timed(self, kind, method):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                self.by_kind[kind] += time.perf_counter() - start

        return timed


def rank_main(args) -> None:
    import torch.distributed as dist

    from llm_modules.config import ModelConfig
    from llm_modules.nn.lm import DecoderLM
    from llm_modules.training.pipeline import SCHEDULES, build_stages, schedule_for, stage_ids, torch_stages

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(args.port))
    dist.init_process_group("gloo", rank=args.rank, world_size=args.pp)
    rows = []
    try:
        for name in args.schedules:
            virtual = args.virtual if SCHEDULES[name].multi else 1
            stages_total = args.pp * virtual
            config = ModelConfig(
                vocab_size=256, d_model=args.d_model, n_layers=args.blocks_per_stage * args.pp, n_heads=4,
                max_seq_len=args.seq, position="rope", tie_embeddings=False, dropout=0.0,
            )
            if args.blocks_per_stage * args.pp % stages_total:
                raise SystemExit(f"{config.n_layers} blocks do not split into {stages_total} equal stages")
            for m in args.microbatches:
                torch.manual_seed(0)
                held = stage_ids(args.rank, args.pp, virtual)
                per_stage = config.n_layers // stages_total
                stages = build_stages(DecoderLM(config), held, stages_total, [per_stage] * stages_total)
                runners = torch_stages(stages)
                busy = BusyTime(runners)
                schedule = schedule_for(runners, name, m)
                generator = torch.Generator().manual_seed(1)
                ids = torch.randint(0, 256, (m * args.microbatch_size, args.seq), generator=generator)
                targets = ids.roll(-1, 1)
                wall = 0.0
                for step in range(args.warmup + args.steps):
                    if step == args.warmup:
                        busy.reset()
                    for stage in stages:
                        stage.zero_grad(set_to_none=True)
                    dist.barrier()
                    start = time.perf_counter()
                    # the schedule alone (train_step adds the optimizer), until the last stage is done
                    inputs = (ids,) if any(stage.is_first for stage in stages) else ()
                    schedule.step(*inputs, target=targets, losses=[], loss_kwargs={"tokens": targets.numel()})
                    dist.barrier()
                    if step >= args.warmup:
                        wall += time.perf_counter() - start
                rows.append({
                    "schedule": name, "microbatches": m, "stage": args.rank, "wall_s": wall, "busy_s": busy.seconds,
                    "forward_s": busy.by_kind["forward"],
                    "backward_s": busy.by_kind["backward"], "idle": 1 - busy.seconds / wall,
                    "expected": expected_bubble(args.pp, m, virtual), "virtual": virtual,
                })
        Path(args.out).write_text(json.dumps(rows))
    finally:
        dist.destroy_process_group()


def launch(args) -> list[dict]:
    """Run the ranks as subprocesses of this script (``_gloo_ranks``); return every rank's rows."""
    forwarded = [
        "--pp", str(args.pp), "--steps", str(args.steps), "--warmup", str(args.warmup),
        "--d-model", str(args.d_model),
        "--seq", str(args.seq), "--microbatch-size", str(args.microbatch_size),
        "--blocks-per-stage", str(args.blocks_per_stage), "--virtual", str(args.virtual),
        "--schedules", *args.schedules,
        "--microbatches", *map(str, args.microbatches),
    ]
    return run_ranks(__file__, args.pp, forwarded, args.timeout)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pp", type=int, default=2)
    parser.add_argument("--schedules", nargs="+", default=["gpipe", "1f1b"])
    parser.add_argument("--microbatches", nargs="+", type=int, default=[2, 4, 8])
    parser.add_argument("--microbatch-size", type=int, default=4)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--d-model", type=int, default=512)
    parser.add_argument("--blocks-per-stage", type=int, default=6,
                        help="blocks per rank: enough that a micro-batch's compute outweighs sending its activations")
    parser.add_argument("--virtual", type=int, default=2, help="stages per rank of the interleaved schedules")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--json", type=Path, help="also write the rows here")
    add_rank_arguments(parser)
    args = parser.parse_args(argv)
    if args.rank is not None:
        rank_main(args)
        return
    rows = launch(args)
    print(f"{'schedule':24} {'m':>3} {'stage':>5} {'fwd s':>7} {'bwd s':>7} {'wall s':>7} {'idle':>7} {'expected':>8} "
          f"{'ratio':>6}")
    for row in sorted(rows, key=lambda r: (r["schedule"], r["microbatches"], r["stage"])):
        ratio = row["idle"] / row["expected"] if row["expected"] else float("nan")
        print(f"{row['schedule']:24} {row['microbatches']:>3} {row['stage']:>5} {row['forward_s']:>7.3f} "
              f"{row['backward_s']:>7.3f} {row['wall_s']:>7.3f} {row['idle']:>7.3f} "
              f"{row['expected']:>8.3f} {ratio:>6.2f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
