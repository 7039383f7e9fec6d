"""The whole plan for one config and run, as plain data (what ``llm-modules estimate`` prints).

``plan(...)`` returns a JSON-ready dict: parameters, FLOPs, memory per device for the chosen
setup plus the peak under every strategy and precision, scaling-law figures and wall time.
Bytes, FLOPs, tokens and seconds are plain numbers (no units baked in).
"""

from __future__ import annotations

from dataclasses import asdict, replace

from llm_modules.config import check_seq_len
from llm_modules.estimate.activations import Training
from llm_modules.estimate.flops import estimate_flops
from llm_modules.estimate.lora import DEFAULT_TARGETS, plan_lora
from llm_modules.estimate.memory import PRECISIONS, STRATEGIES, Setup, estimate_memory
from llm_modules.estimate.params import count
from llm_modules.estimate.scaling import (
    CHINCHILLA_TOKENS_PER_PARAMETER,
    chinchilla_fit_optimal,
    chinchilla_loss,
    chinchilla_optimal,
    kaplan_loss,
    kaplan_optimal,
)
from llm_modules.estimate.walltime import wall_time
from llm_modules.registry import ConfigError


def plan(cfg, *, kind: str = "causal", setup: Setup | None = None, tokens: float | None = None,
         lora_rank: int = 0, lora_targets=DEFAULT_TARGETS, gpu: str = "h100-sxm", mfu: float = 0.4,
         flop_budget: float | None = None, source: str = "", pipeline=None) -> dict:
    """Everything ``llm-modules estimate`` reports for ``cfg`` trained as ``setup`` on ``tokens``
    tokens (default: the Chinchilla-optimal 20 per parameter).

    ``pipeline``: an ``estimate.pipeline.Pipeline``; then ``setup.devices`` is the data-parallel
    size and ``setup.batch_size`` the rows per replica per step, and the report's ``pipeline``
    (memory per rank, the bubble, the step time) replaces the per-device ``memory`` and the
    matrix by strategy; the wall time counts ``devices x pp x tp`` GPUs, stretched by the bubble."""
    setup = (setup or Setup()).check()
    check_seq_len(setup.seq_len, cfg.max_seq_len, "--seq-len", "use a shorter --seq-len or raise max_seq_len in the "
                  "config", encoder_decoder=kind == "seq2seq")
    if tokens is not None and not tokens > 0:
        raise ConfigError(f"--tokens must be positive; got {tokens}")
    if flop_budget is not None and not flop_budget > 0:
        raise ConfigError(f"--flop-budget must be positive; got {flop_budget}")
    if isinstance(lora_rank, bool) or not isinstance(lora_rank, int) or lora_rank < 0:
        raise ConfigError(f"--lora-rank must be a positive integer; got {lora_rank!r}")

    params = count(cfg, kind)
    training, lora = Training(), None
    if lora_rank:
        lora = plan_lora(cfg, kind, lora_rank, lora_targets)
        training = Training(lora_rank, lora.patterns)
    lora_parameters = lora.parameters if lora else 0

    run_tokens = float(tokens) if tokens is not None else CHINCHILLA_TOKENS_PER_PARAMETER * params.total
    flops = estimate_flops(cfg, params.total, run_tokens, setup.seq_len,
                           (setup.decoder_len or setup.seq_len) if kind == "seq2seq" else None)

    if pipeline is not None:
        return _pipelined(cfg, kind, setup, pipeline, training, lora_parameters, lora, params, run_tokens, tokens,
                          flops, gpu, mfu, flop_budget, source, lora_rank)
    memory = estimate_memory(cfg, kind, params, setup, lora_parameters=lora_parameters, training=training)
    matrix = {
        strategy: {
            precision: estimate_memory(cfg, kind, params, replace(setup, strategy=strategy, precision=precision),
                                       lora_parameters=lora_parameters, training=training).peak
            for precision in PRECISIONS
        }
        for strategy in STRATEGIES
    }

    time = wall_time(flops.total, gpu, setup.precision, mfu, setup.devices)
    return {
        **_common(cfg, kind, setup, source, run_tokens, tokens, lora_rank, lora, params, lora_parameters, flops),
        "memory": memory.as_dict(),
        "memory_peak_by_strategy": matrix,
        "scaling": _scaling(params, run_tokens, flops, flop_budget),
        "time": time.as_dict(),
    }


def _pipelined(cfg, kind, setup, pipeline, training, lora_parameters, lora, params, run_tokens, tokens, flops, gpu,
               mfu, flop_budget, source, lora_rank) -> dict:
    """``plan`` of a pipelined run (its doc)."""
    from llm_modules.estimate.pipeline import estimate_pipeline, step_time

    if lora_parameters:
        raise ConfigError("--lora-rank with --pp is not modelled (a pipeline stage's LoRA split is not traced); "
                          "leave one of them out")
    estimate = estimate_pipeline(cfg, kind, setup, pipeline, training=training)
    devices = setup.devices * pipeline.pp * pipeline.tp
    time = wall_time(flops.total, gpu, setup.precision, mfu, devices).as_dict()
    for key in ("seconds", "hours", "days"):
        time[key] /= 1 - estimate.bubble
    time["bubble"] = estimate.bubble
    step = step_time(flops.per_token, setup, pipeline, estimate.bubble, time["peak_flops"], mfu)
    return {
        **_common(cfg, kind, setup, source, run_tokens, tokens, lora_rank, lora, params, lora_parameters, flops),
        "pipeline": {**estimate.as_dict(), "step": step},
        "scaling": _scaling(params, run_tokens, flops, flop_budget),
        "time": time,
    }


def _common(cfg, kind, setup, source, run_tokens, tokens, lora_rank, lora, params, lora_parameters, flops) -> dict:
    return {
        "model": {"source": source, "kind": kind, "config": cfg.to_dict()},
        "setup": {**asdict(setup), "tokens": run_tokens, "tokens_default": tokens is None,
                  "lora_rank": lora_rank, "lora_targets": sorted(lora.names) if lora else []},
        "parameters": {**params.as_dict(), "trainable": lora_parameters or params.total, "lora": lora_parameters},
        "flops": {**flops.as_dict(), "hardware_total": flops.hardware_total(setup.activation_checkpointing)},
    }


def _scaling(params, run_tokens, flops, flop_budget) -> dict:
    budget = float(flop_budget) if flop_budget is not None else flops.total
    return {
        "flop_budget": budget,
        "chinchilla_rule": asdict(chinchilla_optimal(budget)),
        "chinchilla_fit": asdict(chinchilla_fit_optimal(budget)),
        "kaplan": asdict(kaplan_optimal(budget)),
        "loss": {
            "parameters": params.total, "non_embedding_parameters": params.non_embedding, "tokens": run_tokens,
            "chinchilla": chinchilla_loss(params.total, run_tokens),
            "kaplan": kaplan_loss(params.non_embedding, run_tokens),
            "kaplan_data_unlimited": kaplan_loss(params.non_embedding),
        },
    }
