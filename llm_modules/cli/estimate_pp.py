"""``llm-modules estimate``'s pipeline options: memory per pipeline rank and the bubble of a run
(``--pp``), and the best data x pipeline x tensor layout for a cluster (``--cluster``).

    llm-modules estimate --preset llama-7b --seq-len 2048 --batch-size 16 --precision bf16-mixed \\
        --pp 4 --schedule 1f1b --microbatches 8 --devices 2
    llm-modules estimate --preset llama-7b --seq-len 2048 --batch-size 64 --precision bf16-mixed \\
        --cluster 2x8 --gpu h100-sxm

Under ``--pp``, ``--devices`` is the data-parallel size (replicas, each FSDP2-sharding its
stages, as the pipeline strategy runs them), and ``--batch-size`` the rows each replica takes per
optimizer step: every pipeline rank of the replica gets them all and the schedule cuts them into
``--microbatches`` equal micro-batches (filled up with rows that take no loss when they do not
divide). ``--cluster`` searches layouts for a global batch of
``--global-batch`` rows per step (default: ``--batch-size x --devices``).
"""

from __future__ import annotations

import argparse

from llm_modules.registry import ConfigError

GB = 1e9


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("pipeline parallelism (estimate.pipeline, estimate.layout)")
    group.add_argument("--pp", type=int, default=None, metavar="N",
                       help="pipeline ranks: memory per rank, the bubble and the step time of a pipelined run")
    group.add_argument("--schedule", default=None, metavar="NAME",
                       help="gpipe, 1f1b, interleaved-1f1b, interleaved-zero-bubble (the pipeline strategy's; "
                            "default 1f1b)")
    group.add_argument("--microbatches", type=int, default=None, metavar="M",
                       help="micro-batches per step that --batch-size is cut into (default: one per stage)")
    group.add_argument("--virtual-stages", type=int, default=None, metavar="V",
                       help="stages per pipeline rank (interleaved schedules; default: the schedule's)")
    group.add_argument("--tp", type=int, default=None, metavar="T", help="tensor-parallel ranks per stage (default 1)")
    group.add_argument("--blocks", default=None, metavar="COUNTS",
                       help="blocks per stage, e.g. 3,5 (default: balanced by --balance, as the runtime)")
    group.add_argument("--balance", choices=("params", "flops"), default=None,
                       help="what the default split evens out: params (memory) or flops (time) (default params)")
    group.add_argument("--cluster", default=None, metavar="NODESxGPUS",
                       help="search the best dp x pp x tp layout for this many nodes x GPUs per node, e.g. 2x8")
    group.add_argument("--global-batch", type=int, default=None, metavar="ROWS",
                       help="--cluster: rows per optimizer step over the whole cluster (default: batch size x devices)")
    group.add_argument("--gpu-memory", type=float, default=None, metavar="GB",
                       help="--cluster: memory per GPU in GiB (default: --gpu's, from the table)")
    group.add_argument("--top", type=int, default=5, metavar="K", help="--cluster: layouts to print (default 5)")
    group.add_argument("--node-bandwidth", type=float, default=300, metavar="GB/s",
                       help="--cluster: bytes/s per GPU inside a node, in GB/s (default 300, NVLink class)")
    group.add_argument("--network-bandwidth", type=float, default=25, metavar="GB/s",
                       help="--cluster: bytes/s per GPU between nodes, in GB/s (default 25, 200 Gb/s InfiniBand)")


OPTIONS = ("pp", "schedule", "microbatches", "virtual_stages", "tp", "blocks", "balance")


def pipelined(args, defaults: dict | None = None) -> bool:
    """Whether the options (or a fit config's pipeline strategy, ``defaults``) ask for a pipelined plan."""
    return any(getattr(args, name) is not None or name in (defaults or {}) for name in OPTIONS)


def pipeline_of(args, defaults: dict | None = None):
    """The ``estimate.pipeline.Pipeline`` of the options, over a fit config's ``defaults``
    (``--pp`` is required with the other options)."""
    from llm_modules.estimate.pipeline import Pipeline

    defaults = defaults or {}

    def pick(name):
        value = getattr(args, name)
        return value if value is not None else defaults.get(name)

    pp = pick("pp")
    if pp is None:
        given = next(f"--{n.replace('_', '-')}" for n in OPTIONS if getattr(args, n) is not None)
        raise ConfigError(f"{given} is a pipeline option; give --pp N too (N = 1 for tensor parallelism alone)")
    blocks = pick("blocks")
    if isinstance(blocks, str):
        try:
            blocks = tuple(int(b) for b in blocks.split(","))
        except ValueError:
            raise ConfigError(f"--blocks {blocks!r}: give blocks per stage as integers, e.g. 3,5") from None
    return Pipeline(pp=pp, schedule=pick("schedule") or "1f1b",
                    microbatches=pick("microbatches"),
                    virtual=pick("virtual_stages"), tp=pick("tp") if pick("tp") is not None else 1,
                    blocks=tuple(blocks) if blocks is not None else None, balance=pick("balance") or "params")


def fit_defaults(strategy, devices: int | None, nodes: int = 1) -> dict:
    """The pipeline options of a fit config's ``trainer.strategy`` when it is the pipeline strategy
    (``training.pipeline_strategy.PipelineParallelStrategy``) or Lightning's tensor-parallel
    ``ModelParallelStrategy`` (one stage): sizes (``auto`` resolved as the strategies do, from
    ``devices`` = devices x nodes, of ``nodes`` nodes), schedule, micro-batches, virtual stages, blocks, and
    ``devices`` = the data-parallel size; {} for any other strategy."""
    name = str(strategy.get("class_path", "")).rsplit(".", 1)[-1] if isinstance(strategy, dict) else ""
    if name not in ("PipelineParallelStrategy", "ModelParallelStrategy"):
        return {}
    args = strategy.get("init_args") or {}
    tp = args.get("tensor_parallel_size", 1 if name == "PipelineParallelStrategy" else "auto")
    pp, dp = args.get("pipeline_parallel_size", "auto" if name == "PipelineParallelStrategy" else 1), \
        args.get("data_parallel_size", "auto")
    if tp == "auto":  # ModelParallelStrategy: the devices of a node, or what data parallelism leaves
        tp = (devices or 1) // nodes if dp == "auto" else max(1, (devices or 1) // dp)
    tp = int(tp)
    world = devices or 1
    if pp == "auto":
        pp = world // (tp * (dp if isinstance(dp, int) else 1))
    if dp == "auto":
        dp = max(1, world // (tp * pp))
    out = {"pp": int(pp), "tp": tp, "devices": int(dp), "schedule": args.get("schedule", "1f1b")}
    for name in ("microbatches", "virtual_stages", "blocks", "balance"):
        if args.get(name) is not None:
            out[name] = args[name]
    return out


def layouts(args, cfg, kind: str, setup, report: dict) -> dict:
    """``estimate.layout.search`` for ``--cluster``."""
    from llm_modules.estimate.layout import GIB, Cluster, gpu_memory, parse_cluster, search

    nodes, gpus = parse_cluster(args.cluster)
    for name in ("top", "global_batch"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be a positive integer; got {value}")
    for name in ("gpu_memory", "node_bandwidth", "network_bandwidth"):
        if getattr(args, name) is not None and not getattr(args, name) > 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be positive; got {getattr(args, name)}")
    memory = args.gpu_memory * GIB if args.gpu_memory is not None else gpu_memory(args.gpu)
    cluster = Cluster(nodes, gpus, memory, report["time"]["peak_flops"], args.node_bandwidth * GB,
                      args.network_bandwidth * GB)
    rows = args.global_batch or setup.batch_size * setup.devices
    result = search(cfg, kind, setup, cluster, rows, report["flops"]["per_token"], args.mfu, top=args.top)
    if not result["tried"]:
        raise ConfigError(f"--cluster {args.cluster}: no layout splits {rows} rows per step evenly over its "
                          "data-parallel replicas and micro-batches (at least one per pipeline rank); give a "
                          f"--global-batch that is a multiple of the {nodes * gpus} GPUs")
    if not result["fitting"]:
        small = result["smallest_that_does_not_fit"]
        closest = (f"; the smallest peak is {small['peak'] / GB:.1f} GB (dp {small['dp']}, pp {small['pp']}, tp "
                   f"{small['tp']})" if small else "")
        raise ConfigError(f"--cluster {args.cluster}: no layout of {rows} rows x {setup.seq_len} tokens fits "
                          f"{memory / GIB:.0f} GiB per GPU{closest}; use more GPUs, a smaller --global-batch or "
                          "--seq-len, or a half precision")
    return result


# ---- printing ---------------------------------------------------------------------------------------------


def _gb(value: float) -> str:
    return f"{value / GB:,.2f} GB" if abs(value) >= GB or value == 0 else f"{value / 1e6:,.1f} MB"


def pipeline_lines(report: dict) -> list[str]:
    """The table's pipeline section (in place of the per-device memory)."""
    p, s = report["pipeline"], report["setup"]
    step = p["step"]
    formula = (f"{p['bubble_formula']:.3f} by {p['bubble_formula_text']}" if p["bubble_formula"] is not None
               else p["bubble_formula_text"])
    lines = [
        "",
        (f"pipeline: {p['pp']} ranks x {p['virtual_stages']} stage(s) each, {p['schedule']}, {p['microbatches']} "
         f"micro-batches of {p['microbatch_rows']} rows; tp {p['tp']}, dp {s['devices']} (FSDP2)"),
        f"  bubble             {p['bubble']:>10.3f}   of each step idle ({formula})",
        (f"  step               {step['seconds']:>10.3g} s   ({step['compute_seconds']:.3g} s of compute, "
         f"x{step['slowdown']:.3f} for the bubble)"),
        "",
        "memory per pipeline rank (per device; GB = 1e9 bytes, MB = 1e6)",
        (f"  {'rank':>4} {'stages':>7} {'blocks':>11} {'weights':>11} {'grads':>11} {'optimizer':>11} "
         f"{'in flight':>9} {'activations':>12} {'buffers':>11} {'peak':>11}  at"),
    ]
    for r in p["ranks"]:
        blocks = ",".join(f"{b[0]}-{b[-1]}" if len(b) > 1 else str(b[0]) for b in r["blocks"])
        stages = ",".join(map(str, r["stages"]))
        flight = ",".join(str(v) for v in r["in_flight"].values())
        lines.append(
            f"  {r['rank']:>4} {stages:>7} {blocks:>11} {_gb(r['weights']):>11} {_gb(r['gradients']):>11} "
            f"{_gb(r['optimizer']):>11} {flight:>9} {_gb(r['activations']):>12} "
            f"{_gb(r['buffers'] + r['kept_outputs'] + r['gathered']):>11} {_gb(r['peak']):>11}  {r['peak_phase']}")
    lines.append("  (in flight: most micro-batches a stage holds activations of; buffers: receive buffers and "
                 "FSDP2's gathered weights)")
    return lines


def layout_lines(result: dict) -> list[str]:
    c = result["cluster"]
    lines = [
        "",
        (f"best layouts on {c['nodes']} x {c['gpus_per_node']} GPUs of {c['memory'] / 2**30:.0f} GiB, "
         f"{result['global_batch']} rows per step ({result['fitting']} of {result['tried']} fit)"),
        (f"  {'dp':>3} {'pp':>3} {'tp':>3} {'schedule':<24} {'m':>4} {'peak':>11} {'bubble':>7} {'step s':>9} "
         f"{'comm s':>8} {'tokens/s':>11}"),
    ]
    for row in result["best"]:
        name = row["schedule"] or "-"
        comm = sum(row["communication_seconds"].values())
        lines.append(f"  {row['dp']:>3} {row['pp']:>3} {row['tp']:>3} {name:<24} {row['microbatches']:>4} "
                     f"{_gb(row['peak']):>11} {row['bubble']:>7.3f} {row['step_seconds']:>9.3g} {comm:>8.3g} "
                     f"{row['tokens_per_second']:>11,.0f}")
    return lines
