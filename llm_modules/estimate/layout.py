"""The best data x pipeline x tensor layout of a run on a cluster of ``nodes x gpus`` (``estimate --cluster``).

Candidates: every ``tp`` that divides the GPUs of a node and the model's attention and key/value
heads (tensor parallelism stays inside a node: it talks every block), every ``pp`` that divides
what is left and leaves each stage a block, ``dp`` the rest; for each, every schedule, its
default stages per rank, and micro-batch counts from ``pp`` up that divide the replica's rows
(``global_batch / dp``). Each candidate's per-device peak is ``estimate.pipeline``'s largest rank
(one stage and no schedule when ``pp`` is 1; replicas shard with FSDP2, as the pipeline strategy
does); those that fit the GPU's memory are ranked by step time:

    compute / (1 - bubble) + tensor-parallel + pipeline + data-parallel communication

with ``compute`` the replica's model FLOPs over its ``pp x tp`` devices at the planned MFU, and
the communication a deliberately simple, unoverlapped term (ring collectives, one bandwidth per
link kind: ``node_bandwidth`` inside a node, ``network_bandwidth`` between nodes, bytes per
second per GPU): tensor parallelism all-reduces a micro-batch's hidden state twice per block in
the forward and twice in the backward; the pipeline sends each micro-batch's hidden state and its
gradient once per rank; data parallelism all-reduces the rank's gradients (FSDP: reduce-scatter
plus all-gather, the same bytes). The mesh is the pipeline strategy's ``(dp, pp, tp)``, tp
fastest: tp stays inside a node, pp crosses nodes once ``tp x pp`` exceeds a node, dp crosses
them whenever there are several nodes. Activations are traced once, for one row, and scaled
by the rows of a micro-batch (they are per row, but for the loss's fixed-size workspace).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from llm_modules.estimate.activations import Activations, Training, estimate_activations
from llm_modules.estimate.memory import Setup, state_bytes
from llm_modules.estimate.pipeline import Pipeline, estimate_pipeline
from llm_modules.registry import ConfigError

#: device memory of the GPUs in ``training.model_flops.PEAKS``, by its row name (vendor "GB": GiB)
GPU_MEMORY_GIB = {
    "GH200": 96, "H200 NVL": 141, "H200 SXM": 141, "H100 NVL": 94, "H100 PCIe": 80, "H100 SXM": 80, "A100": 80,
    "A10G": 24, "A10": 24, "L40S": 48, "L40": 48, "L4": 24, "V100S PCIe": 32, "V100 PCIe": 32, "V100 SXM2": 32,
    "RTX 4090": 24, "MI300X": 192,
}
GIB = 2**30


def gpu_memory(gpu: str) -> float:
    """Bytes of device memory of ``gpu`` (a name ``training.model_flops.lookup_gpu`` knows)."""
    from llm_modules.training.model_flops import lookup_gpu

    peak = lookup_gpu(gpu)
    if peak is None or peak.name not in GPU_MEMORY_GIB:
        raise ConfigError(f"--gpu {gpu!r}: its memory is not in the table; give it with --gpu-memory GB")
    return GPU_MEMORY_GIB[peak.name] * GIB


@dataclass(frozen=True)
class Cluster:
    nodes: int
    gpus_per_node: int
    memory: float  # bytes per GPU
    peak_flops: float  # per GPU, in the run's math mode
    node_bandwidth: float = 300e9  # bytes/s per GPU inside a node (NVLink class)
    network_bandwidth: float = 25e9  # bytes/s per GPU between nodes (200 Gb/s InfiniBand class)

    @property
    def gpus(self) -> int:
        return self.nodes * self.gpus_per_node


def parse_cluster(text: str) -> tuple[int, int]:
    """``2x8`` -> (2 nodes, 8 GPUs each)."""
    parts = text.lower().replace(" ", "").split("x")
    try:
        nodes, gpus = (int(p) for p in parts)
    except ValueError:
        raise ConfigError(f"--cluster {text!r}: give NODESxGPUS, e.g. 2x8 for two nodes of 8 GPUs") from None
    if nodes < 1 or gpus < 1:
        raise ConfigError(f"--cluster {text!r}: nodes and GPUs per node must be at least 1")
    return nodes, gpus


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _scaled(acts: Activations, factor: float) -> Activations:
    per_row = ("blocks", "block", "block_inputs", "outside", "forward_transient", "backward_transient", "head",
               "logits")
    return replace(acts, **{name: getattr(acts, name) * factor for name in per_row})


def search(cfg, kind: str, setup: Setup, cluster: Cluster, global_batch: int, flops_per_token: float, mfu: float,
           *, training: Training | None = None, top: int = 5, schedules: tuple[str, ...] | None = None) -> dict:
    """The layouts of ``global_batch`` rows of ``setup.seq_len`` tokens per optimizer step on
    ``cluster`` that fit, best first (module doc), and how many were tried."""
    from llm_modules.training.pipeline.schedules import SCHEDULES, stages_per_rank

    training = training or Training()
    n_layers = cfg.n_layers
    heads, kv = cfg.n_heads, cfg.kv_heads
    b = state_bytes(setup.precision, setup.strategy)
    autocast = setup.precision.endswith("-mixed") and setup.strategy == "ddp"
    one_row = estimate_activations(cfg, kind=kind, precision=setup.precision,
                                   params_half=b.compute == 2 and not autocast, batch_size=1, seq_len=setup.seq_len,
                                   training=training, device=setup.device)
    hidden_row = one_row.block_inputs / max(n_layers, 1)
    parameters = _total_parameters(cfg, kind)
    element = 4 if setup.precision == "32-true" else 2
    fits, tried, smallest, refused = [], 0, None, set()
    for tp in _divisors(cluster.gpus_per_node):
        if heads % tp or kv % tp:
            continue
        for pp in _divisors(cluster.gpus // tp):
            if pp > n_layers:
                continue
            dp = cluster.gpus // (tp * pp)
            if global_batch % dp:
                continue
            rows = global_batch // dp
            run = replace(setup, devices=dp, batch_size=rows, strategy="fsdp")
            names = ["gpipe"] if pp == 1 else list(schedules or SCHEDULES)
            for name in names:
                virtual = stages_per_rank(name, None)
                if pp * virtual > n_layers:
                    continue
                for m in ([1] if pp == 1 else [m for m in _divisors(rows) if m >= pp]):
                    tried += 1
                    try:
                        est = estimate_pipeline(cfg, kind, run, Pipeline(pp, name, m, None, tp), training=training,
                                                acts=_scaled(one_row, rows // m))
                        peak, bubble = est.peak, est.bubble
                    except ConfigError as err:
                        refused.add(str(err))
                        continue
                    micro_rows = rows // m
                    compute = flops_per_token * rows * setup.seq_len / (pp * tp * cluster.peak_flops * mfu)
                    comm = _communication(cfg, cluster, parameters, dp, pp, tp, m, micro_rows, hidden_row, element)
                    seconds = compute / (1 - bubble) + sum(comm.values())
                    row = {"dp": dp, "pp": pp, "tp": tp, "schedule": None if pp == 1 else name,
                           "virtual_stages": None if pp == 1 else virtual, "microbatches": m,
                           "microbatch_rows": micro_rows, "peak": peak, "bubble": bubble,
                           "compute_seconds": compute, "communication_seconds": comm, "step_seconds": seconds,
                           "tokens_per_second": global_batch * setup.seq_len / seconds}
                    if peak <= cluster.memory:
                        fits.append(row)
                    elif smallest is None or peak < smallest["peak"]:
                        smallest = row
    fits.sort(key=lambda r: (r["step_seconds"], r["peak"]))
    return {"cluster": {"nodes": cluster.nodes, "gpus_per_node": cluster.gpus_per_node, "memory": cluster.memory,
                        "peak_flops": cluster.peak_flops, "node_bandwidth": cluster.node_bandwidth,
                        "network_bandwidth": cluster.network_bandwidth},
            "global_batch": global_batch, "tried": tried, "fitting": len(fits), "best": fits[:top],
            "smallest_that_does_not_fit": smallest, "refused": sorted(refused)}


def _total_parameters(cfg, kind: str) -> int:
    from llm_modules.estimate.params import count

    return count(cfg, kind).total


def _communication(cfg, cluster: Cluster, parameters: int, dp: int, pp: int, tp: int, m: int, micro_rows: int,
                   hidden_row: float, element: int) -> dict:
    """Seconds per step of each kind of communication (module doc)."""
    hidden = hidden_row * micro_rows  # one micro-batch's hidden state
    out = {"tp": 0.0, "pp": 0.0, "dp": 0.0}
    if tp > 1:
        per_allreduce = 2 * (tp - 1) / tp * hidden / cluster.node_bandwidth
        out["tp"] = 4 * (cfg.n_layers / pp) * m * per_allreduce
    if pp > 1:
        bandwidth = cluster.network_bandwidth if tp * pp > cluster.gpus_per_node else cluster.node_bandwidth
        out["pp"] = 2 * m * hidden / bandwidth
    if dp > 1:
        bandwidth = cluster.network_bandwidth if cluster.nodes > 1 else cluster.node_bandwidth
        out["dp"] = 2 * (dp - 1) / dp * parameters / (pp * tp) * element / bandwidth
    return out
