"""One rank of the pipeline-parallel probe (tests/integration/test_pipeline_probe.py), and the model and
data that the probe's single-process reference shares with it.

Run as ``python tests/_pipeline_worker.py RANK WORLD PORT OUT``: joins a gloo group on 127.0.0.1:PORT,
trains, for each of ``RUNS`` (LM kind, schedule, gradient clipping), a copy of the same tiny model for
``STEPS`` AdamW steps as stage RANK, and writes ``OUT/rank<RANK>.json`` with the per-step losses (on
the last stage; empty lists elsewhere) keyed by ``run_name``, and the stage's trained weights
(``OUT/rank<RANK>-<run>.safetensors``), and rank 0 the whole model's (``OUT/full-<run>.safetensors``).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

from llm_modules.config import ModelConfig
from llm_modules.nn.lm import DecoderLM, EncoderLM

STEPS, BATCH, SEQ, MICROBATCHES, VOCAB = 5, 8, 16, 4, 64
#: the LM kinds the probe trains: CausalLM, PrefixLM, MaskedLM (as their torch models)
KINDS = ("causal", "prefix", "masked")
#: the runs: (kind, schedule, max_grad_norm), each kind once and a clipped one (which clips every step: the
#: norms are larger); every kind x schedule, and pp x dp, run through the Lightning strategy
#: (tests/integration/test_pipeline_strategy.py)
RUNS = [("causal", "gpipe", None), ("prefix", "1f1b", None), ("masked", "1f1b", None), ("causal", "1f1b", 0.5)]


def run_name(kind: str, schedule: str, max_grad_norm: float | None) -> str:
    return f"{kind}/{schedule}" + ("" if max_grad_norm is None else f"/clip{max_grad_norm}")


def model(kind: str = "causal", **overrides) -> DecoderLM | EncoderLM:
    """The probe's tiny LM of ``kind`` (4 blocks, d 32, vocab 64), the same weights on every call."""
    torch.manual_seed(0)
    fields = dict(
        vocab_size=VOCAB, d_model=32, n_layers=4, n_heads=4, max_seq_len=32, attention="eager",
        position="learned", dropout=0.0, attention_dropout=0.0, tie_embeddings=False,
        # no key bias: its gradient is zero up to rounding, which Adam would blow up to lr-sized steps that
        # differ between any two summation orders, and the trained weights could not be compared
        bias=False,
    )
    fields.update(overrides)
    config = ModelConfig(**fields)
    return EncoderLM(config) if kind == "masked" else DecoderLM(config, prefix=kind == "prefix")


def batches(kind: str = "causal") -> list[tuple[torch.Tensor, torch.Tensor, dict]]:
    """``STEPS`` + 1 batches (the last one held out for validation) of ``kind``: (input_ids, targets,
    the model's other inputs), rows that count up from a random start (mod VOCAB), so that the loss
    falls within a few steps. Causal: no padding, every next token a target; prefix: a random
    prefix per row, targets after it only; masked: a few right-padded rows, about a quarter of the
    tokens masked and predicted. So the micro-batches of the last two hold different numbers of
    targets."""
    generator = torch.Generator().manual_seed(1)
    out = []
    for _ in range(STEPS + 1):
        ids = (torch.randint(0, VOCAB, (BATCH, 1), generator=generator) + torch.arange(SEQ)) % VOCAB
        targets = torch.full_like(ids, -100)
        inputs = {}
        if kind == "masked":
            lengths = SEQ - torch.randint(0, 5, (BATCH, 1), generator=generator)
            real = torch.arange(SEQ) < lengths
            masked = (torch.rand(BATCH, SEQ, generator=generator) < 0.25) & real
            targets = ids.masked_fill(~masked, -100)
            ids = ids.masked_fill(masked, VOCAB - 1).masked_fill(~real, 0)
            inputs["attention_mask"] = real.long()
        else:
            targets[:, :-1] = ids[:, 1:]
        if kind == "prefix":
            prefix = torch.randint(1, SEQ - 2, (BATCH,), generator=generator)
            targets = targets.masked_fill(torch.arange(SEQ) + 1 < prefix.unsqueeze(1), -100)
            inputs["prefix_lengths"] = prefix
        out.append((ids, targets, inputs))
    return out


def optimizer(params) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1)


def main(rank: int, world: int, port: int, out: Path) -> None:
    import torch.distributed as dist
    from safetensors.torch import save_file

    from llm_modules.training.pipeline import (
        build_stage, eval_step, gather_state_dict, pipeline_schedule, train_step,
    )

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        result = {}
        for kind, name, clip in RUNS:
            stage = build_stage(model(kind), rank, world)
            schedule = pipeline_schedule(stage, name, MICROBATCHES)
            opt = optimizer(stage.parameters())
            *train, (held_ids, held_targets, held_inputs) = batches(kind)
            losses = [
                train_step(schedule, stage, opt, ids, targets, max_grad_norm=clip, **inputs)
                for ids, targets, inputs in train
            ]
            key = run_name(kind, name, clip)
            result[key] = [loss.item() for loss in losses if loss is not None]
            held_out = eval_step(schedule, stage, held_ids, held_targets, **held_inputs)
            result[f"{key}/eval"] = None if held_out is None else held_out.item()
            result[f"{key}/blocks"] = [stage.blocks.start, stage.blocks.stop]
            # the trained weights: each stage's own (under the whole model's names), and the whole model's
            # gathered on the first rank
            weights = {k: v.contiguous() for k, v in stage.state_dict().items()}
            save_file(weights, out / f"rank{rank}-{key.replace('/', '-')}.safetensors")
            full = gather_state_dict(stage)
            if full is not None:
                save_file(full, out / f"full-{key.replace('/', '-')}.safetensors")
        (out / f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4]))
