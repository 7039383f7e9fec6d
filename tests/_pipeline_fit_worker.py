"""One rank of the pipeline-strategy runs (tests/integration/test_pipeline_strategy.py): Lightning's
Trainer with ``PipelineParallelStrategy``, the LightningModules CausalLM, PrefixLM and MaskedLM, and the
probe's tiny models and batches (``_pipeline_worker``).

Run as ``python tests/_pipeline_fit_worker.py LAUNCH RANK WORLD PORT OUT``; the processes are started by
the test (LightningEnvironment reads LOCAL_RANK/WORLD_SIZE, so Lightning launches nothing itself).
LAUNCH is a mode or a group of modes run in turn (``LAUNCHES``: ``two``, ``four``). Modes:
``schedules``: pp 2, every (kind, schedule) of ``RUNS`` in turn, ``STEPS`` steps each;
``dp``/``tp``: a (2, 2, 1) or (1, 2, 2) mesh on 4 processes; ``full``: 2 epochs of ``EPOCH`` steps with
distributed checkpoints after each; ``kill``: the same, SIGKILLed 2 steps into the second epoch;
``resume``: from the first epoch's folder of ``kill`` to the end; ``consolidated``: 5 steps, then one file with the whole model's weights.
Each writes ``OUT/MODE-rank<RANK>.json`` (per-step losses, validation loss) and, for the resume
modes, the rank's trained weights.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch.utils.data import DataLoader

import _pipeline_worker as probe

RUNS = [(kind, schedule) for kind in probe.KINDS
        for schedule in ("gpipe", "1f1b", "interleaved-1f1b", "interleaved-zero-bubble")]
#: runs with more: gradients clipped by the Trainer (across the stages), LoRA on the pipelined model
EXTRA = {"causal/1f1b/clip": {"trainer": {"gradient_clip_val": 0.5}},
         "causal/gpipe/lora": {"module": {"peft": "lora"}},
         # the loss-spike guard refuses batch 3, whose targets are shuffled (a loss above the running
         # mean): its gradients, which the schedule computed with the forward, must not be applied
         "causal/1f1b/spike": {"module": {"stability": {"spike_guard": True, "spike_warmup": 2, "spike_zscore": 0.0,
                                                        "spike_ratio": 1.0, "rollback_after": 0}},
                               "noisy_batch": 3},
         # 8 rows in 3 micro-batches: a row without targets evens them out
         "masked/1f1b/uneven": {"strategy": {"microbatches": 3}},
         # every block recomputed in the backward (the memory saver inside interleaved stages)
         "prefix/interleaved-1f1b/recompute": {"module": {"memory": {"activation_checkpointing": True}}}}
RUNS_4 = {"dp": [("masked", "1f1b", (2, 2, 1))],  # the replicas' halves hold different numbers of targets
          "tp": [("prefix", "interleaved-1f1b", (1, 2, 2))]}
#: the processes of this run (Lightning's environment removes WORLD_SIZE from os.environ when a fit ends)
WORLD = int(os.environ.get("WORLD_SIZE", 1))
CLASSES = {"causal": "CausalLM", "prefix": "PrefixLM", "masked": "MaskedLM"}
#: batches per epoch: a checkpoint every EPOCH steps ends an epoch, so a resumed run starts a fresh one
#: (a plain DataLoader cannot be resumed mid-epoch)
EPOCH = probe.STEPS
OPTIM = {"lr": 1e-2, "warmup_steps": 2, "weight_decay": 0.1}


#: what makes the probe's model a Llama (for the consolidated checkpoint, which export writes as one)
LLAMA = {"norm": "rmsnorm", "activation": "swiglu", "position": "rope"}


def module(kind: str, peft: str | None = None, stability: dict | None = None, memory: dict | None = None,
           **overrides):
    """The probe's tiny model of ``kind`` as its LightningModule (same config; weights from the seed)."""
    import llm_modules

    torch.manual_seed(0)
    config = probe.model(kind, **overrides).config.to_dict()
    return getattr(llm_modules, CLASSES[kind])(config=config, optim=OPTIM, peft=peft, stability=stability,
                                               memory=memory)


def rows(kind: str, steps: int = probe.STEPS, noisy_batch: int | None = None) -> list[dict]:
    """The probe's batches as dataset rows (labels given, so every kind's targets are the probe's);
    batch ``noisy_batch`` with its targets shuffled (a loss well above the others')."""
    out = []
    batches = probe.batches(kind)
    while len(batches) < steps + 1:
        batches = batches + probe.batches(kind)
    for index, (ids, targets, inputs) in enumerate(batches[:steps]):
        if index == noisy_batch:
            order = torch.randperm(targets.numel(), generator=torch.Generator().manual_seed(2))
            targets = targets.flatten()[order].view_as(targets)
        for i in range(ids.shape[0]):
            out.append({"input_ids": ids[i], "labels": targets[i], **{k: v[i] for k, v in inputs.items()}})
    return out


class Record(Callback):
    """Each step's training loss (what training_step returned: the whole batch's, on every rank) and
    logged gradient norm (before clipping)."""

    def __init__(self):
        self.losses: list[float] = []
        self.norms: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))
        self.norms.append(float(trainer.callback_metrics["train/grad_norm"]))


def fit(kind: str, strategy, steps: int, out: Path | None = None, ckpt_path=None, callbacks=(),
        checkpoint_every: int | None = None, replicas: int = 1, extra: dict | None = None, **overrides):
    """Train ``kind`` for ``steps`` under ``strategy`` (None: one process), each of ``replicas``
    data-parallel replicas reading its share of every batch (``extra``: more Trainer and module
    options, see ``EXTRA``); (losses, val loss, module, gradient norms)."""
    extra = extra or {}
    lm = module(kind, **extra.get("module", {}), **overrides)
    data = rows(kind, min(steps, EPOCH), extra.get("noisy_batch"))
    held = rows(kind, probe.STEPS + 1)[-probe.BATCH:]
    record = Record()
    more = list(callbacks)
    if checkpoint_every:
        more.append(ModelCheckpoint(dirpath=out, every_n_train_steps=checkpoint_every, save_top_k=-1,
                                     filename="step{step}", auto_insert_metric_name=False))
    trainer = L.Trainer(
        accelerator="cpu", devices=WORLD if strategy is not None else 1, strategy=strategy or "auto",
        max_steps=steps, logger=False, enable_checkpointing=bool(checkpoint_every), enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, val_check_interval=steps, check_val_every_n_epoch=None,
        limit_val_batches=1,
        callbacks=[record, *more], use_distributed_sampler=False, **extra.get("trainer", {}),
    )
    # each data-parallel replica reads every replicas-th row, in order (as DistributedSampler without
    # shuffling; Lightning's own replacement sampler is off so that nothing reorders the rows)
    replica = strategy_replica(strategy, replicas)
    batch = probe.BATCH // replicas
    trainer.fit(lm, DataLoader(data[replica::replicas], batch_size=batch),
                DataLoader(held[replica::replicas], batch_size=batch), ckpt_path=ckpt_path)
    return record.losses, float(trainer.callback_metrics["val/loss"]), lm, record.norms


def strategy_replica(strategy, replicas: int) -> int:
    """This process's data-parallel index on a (data, pipeline, tensor) mesh (ranks in row-major order)."""
    if strategy is None or replicas == 1:
        return 0
    return int(os.environ["LOCAL_RANK"]) // (WORLD // replicas)


def strategy(sizes=(1, 2, 1), schedule: str = "1f1b", **options):
    from llm_modules.training.pipeline_strategy import PipelineParallelStrategy

    dp, pp, tp = sizes
    options = {"microbatches": 4 // dp, **options}
    return PipelineParallelStrategy(pipeline_parallel_size=pp, data_parallel_size=dp, tensor_parallel_size=tp,
                                    schedule=schedule, **options)


def full_weights(lm) -> dict[str, torch.Tensor]:
    """This rank's parameters as whole tensors (gathered over data/tensor-parallel shards)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(lm, options=StateDictOptions(full_state_dict=True, cpu_offload=False))
    return {name: value.detach().clone().contiguous() for name, value in state.items()}


class KillAt(Callback):
    """SIGKILL this process when training reaches ``step`` (after the checkpoints before it)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def run_mode(mode: str, rank: int, out: Path) -> dict:
    """One mode's runs on this rank (the module docstring lists them); their results by run name."""
    from safetensors.torch import save_file

    result = {}
    if mode == "schedules":
        for kind, schedule in RUNS:
            losses, val, _, norms = fit(kind, strategy(schedule=schedule), probe.STEPS)
            result[f"{kind}/{schedule}"] = {"losses": losses, "val": val, "norms": norms}
        for key, extra in EXTRA.items():
            kind, schedule, _ = key.split("/")
            losses, val, _, norms = fit(kind, strategy(schedule=schedule, **extra.get("strategy", {})), probe.STEPS,
                                        extra=extra)
            result[key] = {"losses": losses, "val": val, "norms": norms}
    elif mode in RUNS_4:
        for kind, schedule, sizes in RUNS_4[mode]:
            losses, val, _, norms = fit(kind, strategy(sizes, schedule), probe.STEPS, replicas=sizes[0])
            result[f"{kind}/{schedule}"] = {"losses": losses, "val": val, "norms": norms}
    elif mode in ("full", "kill", "resume"):
        folder = out / ("ckpt-full" if mode == "full" else "ckpt-killed")
        ckpt = folder / f"step{EPOCH}.ckpt" if mode == "resume" else None
        callbacks = [KillAt(EPOCH + 2)] if mode == "kill" else []
        losses, val, lm, _ = fit("causal", strategy(), 2 * EPOCH, folder, ckpt, callbacks, checkpoint_every=EPOCH)
        result["causal"] = {"losses": losses, "val": val}
        save_file(full_weights(lm), out / f"{mode}-weights-rank{rank}.safetensors")
    elif mode == "consolidated":
        losses, val, lm, _ = fit("causal", strategy(save_distributed_checkpoint=False), probe.STEPS, out / "consolidated",
                                 checkpoint_every=probe.STEPS, **LLAMA)
        result["causal"] = {"losses": losses, "val": val}
    return result


#: what one launch runs, in one pair (or four) of processes, so that each process starts once
LAUNCHES = {"two": ("schedules", "full", "consolidated"), "four": ("dp", "tp")}


def main(launch: str, rank: int, out: Path) -> None:
    """Each mode of ``launch`` in turn (a mode by its own name: just that one); ``OUT/MODE-rankR.json`` each."""
    torch.set_num_threads(1)
    for mode in LAUNCHES.get(launch, (launch,)):
        (out / f"{mode}-rank{rank}.json").write_text(json.dumps(run_mode(mode, rank, out)))


if __name__ == "__main__":
    mode, rank, world, port, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], Path(sys.argv[5])
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      NODE_RANK="0", GLOBAL_RANK=str(rank))
    WORLD = world
    main(mode, rank, out)
