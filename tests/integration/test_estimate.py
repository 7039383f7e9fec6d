"""``llm_modules.estimate`` and ``llm-modules estimate``: published figures, real models, a real run.

- parameters: LLaMA-7B's 6.74e9; the meta-device count equals the built model for every preset and kind;
- FLOPs: GPT-3 175B on 300B tokens, about 3.1e23 (Brown et al., 2020: 3.14e23);
- model states: the ZeRO paper's Figure 1 (7.5B parameters, 64 GPUs, K = 12);
- activations: the meta-tensor trace (``estimate.meta_cpu``) equals what real models save for backward, over norms,
  residual layouts, feed-forwards, positions, backends, LM kinds, precisions and LoRA;
- peak memory: a real ``Trainer.fit`` on the CPU, measured at the allocator, against the estimate;
- scaling laws (Chinchilla's 70B / 1.4T for Gopher's budget, approach 3's loss) and wall time;
- the command: table, JSON, fit configs, and one-line errors with exit code 2.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import multiprocessing
import subprocess
import sys
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest
import torch

from llm_modules import ModelConfig
from llm_modules.cli import main
from llm_modules.config import preset_dir, preset_names
from llm_modules.estimate.activations import Training, estimate_activations
from llm_modules.estimate.flops import estimate_flops
from llm_modules.estimate.lora import DEFAULT_TARGETS, plan_lora
from llm_modules.estimate.memory import Setup, estimate_memory, model_states
from llm_modules.estimate.params import count, meta_model, preset_kind
from llm_modules.estimate.scaling import (
    chinchilla_fit_optimal,
    chinchilla_loss,
    chinchilla_optimal,
    kaplan_loss,
    kaplan_optimal,
)
from llm_modules.estimate.walltime import wall_time
from llm_modules.nn.loss import cross_entropy
from llm_modules.nn.lm import DecoderLM, EncoderDecoderLM, EncoderLM, count_parameters
from llm_modules.registry import ConfigError
from llm_modules.training.peak_memory import cpu_peak_allocated

ROOT = Path(__file__).resolve().parents[2]
GPT3 = {"vocab_size": 50257, "d_model": 12288, "n_layers": 96, "n_heads": 96, "norm": "layernorm", "activation": "gelu",
            "position": "learned", "attention": "sdpa", "bias": True, "tie_embeddings": True, "max_seq_len": 2048}


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["estimate", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def build(cfg, kind: str):
    return {"causal": lambda: DecoderLM(cfg), "prefix": lambda: DecoderLM(cfg, prefix=True),
            "masked": lambda: EncoderLM(cfg), "seq2seq": lambda: EncoderDecoderLM(cfg)}[kind]()


# ---- parameters --------------------------------------------------------------------------------------------


def test_llama_7b_has_6_74e9_parameters():
    params = count(ModelConfig.from_preset("llama-7b"))
    assert params.total == pytest.approx(6.74e9, rel=0.005)
    assert params.total == 6_738_415_616  # the preset's header, and Hugging Face's count
    assert params.embedding == 32000 * 4096
    assert params.non_embedding == params.total - params.embedding


@pytest.mark.parametrize("name", preset_names())
def test_the_count_splits_the_built_model_for_every_preset(name):
    """The count is the meta-built model's; its split adds up, and every block is the same size. (The
    model is the one the count built and shares: a mixture-of-experts preset takes seconds to build.)"""
    kind = preset_kind(preset_dir().joinpath(f"{name}.yaml").read_text())
    cfg = ModelConfig.from_preset(name)
    params = count(cfg, kind)
    model = meta_model(cfg, kind)
    assert params.total == count_parameters(model)
    stacks = [getattr(model, n) for n in model.stack_names]
    assert {count_parameters(layer) for layer in stacks[-1].layers} == {params.block}
    assert params.outside_blocks >= params.embedding > 0
    if params.total < 1e6:  # tiny presets: also the real model, weights and all
        assert params.total == count_parameters(build(cfg, kind))


@pytest.mark.parametrize("overrides", [
    {"residual": "sandwich", "norm": "scalenorm", "activation": "reglu"},
    {"residual": {"name": "parallel", "shared_norm": False}, "n_kv_heads": 2, "head_dim": 24},
    {"activation": {"name": "moe", "expert": "gelu", "n_experts": 4, "top_k": 2}, "bias": True},
    {"position": "t5", "residual": "post", "head_transform": True, "lm_head_bias": True, "type_vocab_size": 2, "embedding_norm": True},
])
@pytest.mark.parametrize("kind", ["causal", "masked", "seq2seq"])
def test_the_count_equals_the_built_model_for_other_components(overrides, kind):
    if kind == "seq2seq" and "parallel" in str(overrides):
        pytest.skip("a parallel block cannot place cross-attention")
    cfg = ModelConfig(vocab_size=97, d_model=48, n_layers=2, n_heads=4, max_seq_len=32, **overrides)
    model = build(cfg, kind)
    assert count(cfg, kind).total == count_parameters(model)
    linear = {id(m.weight): m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear)}
    assert count(cfg, kind).linear_weights == sum(linear.values())


def test_a_plugin_component_is_counted_on_the_meta_device():
    pytest.importorskip("llm_modules_example")
    cfg = ModelConfig(vocab_size=97, d_model=48, n_layers=2, n_heads=4, norm="dyt", activation="relu2")
    params = count(cfg)
    assert params.method == "meta" and params.total == count_parameters(DecoderLM(cfg))


# ---- FLOPs -------------------------------------------------------------------------------------------------


def test_gpt3_175b_on_300b_tokens_is_about_3_1e23_flops():
    cfg = ModelConfig(**GPT3)
    params = count(cfg)
    assert params.total == pytest.approx(175e9, rel=0.01)
    flops = estimate_flops(cfg, params.total, 300e9, seq_len=2048)
    assert flops.six_nd == pytest.approx(3.14e23, rel=0.01)  # GPT-3 paper, table D.1
    # PaLM's count adds attention (12·L·d·T = 2.9e10 per token, 2.7% more): still "about 3.1e23"
    assert flops.total == pytest.approx(3.14e23, rel=0.05)
    assert flops.attention_per_token == 12 * 96 * 12288 * 2048


@pytest.mark.parametrize("decoder_len", [None, 24])
def test_the_estimators_flops_are_the_trainings_from_the_model_it_shares(decoder_len):
    """``estimate_flops`` hands ``flops_per_token`` the meta model the parameter count built (one build
    per plan); the figure is the one training logs, which builds its own, for decoder-only and
    encoder-decoder models alike, and a CUDA-only backend counts as sdpa."""
    from llm_modules.training.model_flops import flops_per_token

    cfg = ModelConfig(vocab_size=100, d_model=32, n_layers=3, n_encoder_layers=2, n_heads=4, d_ff=64,
                      activation={"name": "moe", "n_experts": 4, "top_k": 2}, tie_embeddings=False)
    flops = estimate_flops(cfg, count(cfg).total, 1e6, seq_len=40, decoder_len=decoder_len)
    assert flops.per_token == flops_per_token(cfg, 40, decoder_len)
    if decoder_len is None:
        assert flops.per_token == estimate_flops(cfg.replace(attention="flash_attn"), 1, 1, 40).per_token


# ---- model states ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy, gigabytes", [
    ("ddp", 120.0), ("zero1", 31.4), ("zero2", 16.6), ("zero3", 1.9), ("fsdp", 1.9),
])
def test_zero_paper_figure_1_model_states(strategy, gigabytes):
    """7.5B parameters on 64 GPUs in mixed precision (2 + 2 + K bytes, K = 12; Rajbhandari et al.)."""
    states = model_states(7.5e9, 7.5e9, "bf16-mixed", strategy, 64)
    assert states.total / 1e9 == pytest.approx(gigabytes, rel=0.02)


def test_lora_trains_only_its_matrices():
    cfg = ModelConfig.from_preset("llama-tiny")
    lora = plan_lora(cfg, "causal", 4)
    from llm_modules.peft.base import apply_peft
    from llm_modules.peft.lora import LoRA

    assert inspect.signature(LoRA).parameters["targets"].default == DEFAULT_TARGETS
    model = DecoderLM(cfg)
    apply_peft(model, {"name": "lora", "r": 4})
    assert lora.parameters == sum(p.numel() for p in model.parameters() if p.requires_grad)
    params = count(cfg)
    full = estimate_memory(cfg, "causal", params, Setup(batch_size=2, seq_len=64))
    adapted = estimate_memory(cfg, "causal", params, Setup(batch_size=2, seq_len=64), lora_parameters=lora.parameters,
                              training=Training(4, lora.patterns))
    assert adapted.gradients == lora.parameters * 4 and adapted.optimizer == lora.parameters * 8
    assert adapted.weights == (params.total + lora.parameters) * 4
    assert adapted.activations < full.activations


# ---- activations against real models -----------------------------------------------------------------------


def saved_bytes(model, kind: str, precision: str, batch: int, length: int) -> tuple[int, int]:
    """(bytes of the tensors autograd saves in a training forward + loss, of which weight casts):
    distinct storages, parameters excluded, through ``saved_tensors_hooks``."""
    model.train()
    ids = torch.randint(0, model.config.vocab_size, (batch, length), generator=torch.Generator().manual_seed(0))
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    shapes = {tuple(p.shape) for p in model.parameters()} | {tuple(p.shape[::-1]) for p in model.parameters()}
    seen: dict[int, int] = {}
    casts: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            cast = t.dtype == torch.bfloat16 and precision == "bf16-mixed" and tuple(t.shape) in shapes
            (casts if cast else seen)[storage.data_ptr()] = storage.nbytes()
        return t

    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16-mixed")
    with autocast, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        extra = {"prefix_lengths": torch.tensor([3, 9][:batch])} if kind == "prefix" else {}
        if kind == "seq2seq":
            logits = model(ids, decoder_input_ids=ids[:, : length // 2])
        else:
            logits = model(ids, **extra)
        cross_entropy(logits, logits.argmax(-1))  # the training loss (LanguageModel.compute_loss)
    return sum(seen.values()) + sum(casts.values()), sum(casts.values())


BASE = {"vocab_size": 300, "d_model": 64, "n_layers": 2, "n_heads": 4, "max_seq_len": 64, "bias": False}
VARIANTS = {
    "llama": {"norm": "rmsnorm", "activation": "swiglu", "position": "rope"},
    "gpt2": {"norm": "layernorm", "activation": "gelu", "position": "learned", "bias": True},
    "post-alibi-relu": {"norm": "rmsnorm", "activation": "relu", "position": "alibi", "residual": "post"},
    "parallel-mqa": {"norm": "layernorm", "activation": "geglu", "position": "rope", "residual": "parallel", "n_kv_heads": 1},
    "sandwich-gqa": {"norm": "rmsnorm", "activation": "reglu", "position": "none", "residual": "sandwich", "n_kv_heads": 2},
    "deepnorm": {"norm": {"name": "layernorm", "bias": False}, "activation": "swiglu", "position": "rope",
                     "residual": "deepnorm"},
    "eager-gqa": {"norm": "rmsnorm", "activation": "silu", "position": "rope", "attention": "eager", "n_kv_heads": 2},
    "bert-head": {"norm": "rmsnorm", "activation": "glu", "position": "sinusoidal", "embedding_norm": True,
                      "head_transform": True},
    "dropout-partial-rope": {"norm": "rmsnorm", "activation": "bilinear", "position": {"name": "rope", "fraction": 0.5},
                                 "dropout": 0.1},
}
CASES = [(name, "causal", VARIANTS[name]) for name in VARIANTS] + [
    ("t5-v1_1-tiny", "seq2seq", None), ("bert-tiny", "masked", None), ("glm-tiny", "prefix", None),
    ("bloom-tiny", "causal", None),
]


@pytest.mark.parametrize("precision", ["32-true", "bf16-true", "bf16-mixed"])
@pytest.mark.parametrize("name, kind, overrides", CASES, ids=[c[0] for c in CASES])
def test_activation_trace_matches_what_real_models_save(name, kind, overrides, precision):
    cfg = ModelConfig(**{**BASE, **overrides}) if overrides is not None else ModelConfig.from_preset(name)
    torch.manual_seed(0)
    model = build(cfg, kind)
    if precision == "bf16-true":
        model = model.to(torch.bfloat16)
    batch, length = 2, 24
    real, casts = saved_bytes(model, kind, precision, batch, length)
    estimate = estimate_activations(cfg, kind=kind, precision=precision, params_half=False, batch_size=batch,
                                    seq_len=length, decoder_len=length // 2 if kind == "seq2seq" else None,
                                    device="cpu")
    copies = 2 * count(cfg, kind).linear_weights if precision == "bf16-mixed" else 0
    assert casts == copies  # autocast's weight casts: the memory estimate's compute copies
    assert estimate.blocks + estimate.outside == pytest.approx(real - casts, rel=0.005)


@pytest.mark.parametrize("precision", ["32-true", "bf16-true"])
@pytest.mark.parametrize("preset, kind, targets", [
    ("llama-tiny", "causal", ("*.q", "*.v")), ("llama-tiny", "causal", ("*.ffn.*", "*.o")),
    ("t5-v1_1-tiny", "seq2seq", ("*.q", "*.v")), ("llama-tiny", "causal", ("*.layers.2.attn.q",)),
])
def test_activation_trace_with_lora(preset, kind, targets, precision):
    """Frozen weights save less: no inputs for their gradients, nothing before the first adapted layer."""
    from llm_modules.peft.base import apply_peft

    cfg = ModelConfig.from_preset(preset, n_layers=4)  # more blocks than the trace runs (two)
    torch.manual_seed(0)
    model = build(cfg, kind)
    apply_peft(model, {"name": "lora", "r": 4, "targets": list(targets)})
    if precision == "bf16-true":
        model = model.to(torch.bfloat16)
    real, _ = saved_bytes(model, kind, precision, 2, 24)
    lora = plan_lora(cfg, kind, 4, targets)
    estimate = estimate_activations(cfg, kind=kind, precision=precision, params_half=False, batch_size=2, seq_len=24,
                                    decoder_len=12 if kind == "seq2seq" else None, training=Training(4, lora.patterns),
                                    device="cpu")
    assert estimate.blocks + estimate.outside == pytest.approx(real, rel=0.005)


def test_a_gpu_target_keeps_the_dropout_masks_of_cudas_fused_kernel():
    """On CUDA, dropout runs the fused ``native_dropout``, which keeps a bool mask where the CPU keeps
    its scaled noise (``estimate.cuda``). That kernel has a CPU implementation too, so a real CPU
    forward with dropout sent through it measures what a GPU keeps."""
    import torch.nn.functional as F
    from torch.overrides import TorchFunctionMode

    class FusedDropout(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func is F.dropout:
                x, p = args[0], kwargs.get("p", args[1] if len(args) > 1 else 0.5)
                return torch.native_dropout(x, p, True)[0]
            return func(*args, **kwargs)

    cfg = ModelConfig(**{**BASE, **VARIANTS["dropout-partial-rope"], "attention": "eager", "attention_dropout": 0.1})
    torch.manual_seed(0)
    model = build(cfg, "causal")
    with FusedDropout():
        real, _ = saved_bytes(model, "causal", "32-true", 2, 24)
    gpu = estimate_activations(cfg, kind="causal", precision="32-true", params_half=False, batch_size=2, seq_len=24,
                               device="cuda")
    cpu = estimate_activations(cfg, kind="causal", precision="32-true", params_half=False, batch_size=2, seq_len=24,
                               device="cpu")
    assert gpu.blocks + gpu.outside == real < cpu.blocks + cpu.outside


# ---- a real training run -----------------------------------------------------------------------------------


def fit_on_cpu(cfg, *, batch: int, length: int, precision: str, checkpointing: bool, steps: int = 2,
               accumulate: int = 1) -> None:
    """``steps`` optimizer steps of a CausalLM with Lightning's Trainer on random tokens."""
    import lightning as L

    from llm_modules import CausalLM

    rows = [{"input_ids": torch.randint(0, cfg.vocab_size, (length,), generator=torch.Generator().manual_seed(i))}
            for i in range(batch * steps * accumulate)]
    lm = CausalLM(cfg, memory={"activation_checkpointing": checkpointing})
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=steps, precision=precision, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, limit_val_batches=0, accumulate_grad_batches=accumulate)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(lm, torch.utils.data.DataLoader(rows, batch_size=batch))


#: (position, activation checkpointing, micro-batches per step) of the measured runs; ``gate`` is the
#: example plugin's position encoding, which keeps tensors no built-in position keeps
PEAK_RUNS = (("rope", False, 1), ("rope", True, 1), ("rope", False, 2), ("gate", False, 1))


def measure_fit_on_cpu(cfg, batch: int, length: int, runs) -> dict[tuple[str, bool, int], int]:
    """``cpu_peak_allocated`` of ``fit_on_cpu`` for each of ``runs`` (module level, so a spawned
    process can run it; a run with the plugin's position only where the plugin is installed)."""
    import importlib.util

    torch.set_num_threads(1)
    if importlib.util.find_spec("llm_modules_example"):
        import llm_modules_example  # noqa: F401  (registers "gate" in this process)
    else:
        runs = [run for run in runs if run[0] != "gate"]
    return {(position, checkpointing, accumulate): cpu_peak_allocated(
        lambda: fit_on_cpu(cfg.replace(position=position), batch=batch, length=length, precision="32-true",
                           checkpointing=checkpointing, accumulate=accumulate))
        for position, checkpointing, accumulate in runs}


PEAK_CONFIG = ModelConfig(vocab_size=4096, d_model=256, n_layers=4, n_heads=4, norm="rmsnorm", activation="swiglu",
                          position="rope", attention="sdpa", bias=False, tie_embeddings=False, max_seq_len=128)
PEAK_BATCH, PEAK_LENGTH = 8, 128


@pytest.fixture(scope="module")
def measured_peaks() -> dict[tuple[str, bool, int], int]:
    # In a fresh process: what earlier tests left in this one (allocations, caches, profiler sessions)
    # would move the allocator's running total. One process for all runs: each run's memory is
    # freed when it ends, and the next run's peak is measured from what is live when it starts.
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(measure_fit_on_cpu, PEAK_CONFIG, PEAK_BATCH, PEAK_LENGTH, PEAK_RUNS).result(timeout=300)


@pytest.mark.parametrize("position, checkpointing, accumulate", PEAK_RUNS,
                         ids=["all-activations", "checkpointed", "accumulating", "plugin-position-gate"])
def test_peak_memory_of_a_real_cpu_training_run_matches_the_estimate(position, checkpointing, accumulate,
                                                                     measured_peaks):
    """Two steps (the second has AdamW's moments) of a LLaMA-style model: weights and optimizer
    states 63 MB, gradients 21 MB, activations about 100 MB. The gradients are freed after each step,
    so they are not at the peak (the end of the forward) unless micro-batches accumulate into them.
    The measured peak (``llm_modules.training.peak_memory``) is within 1% of the estimate, also with
    the example plugin's position encoding ``gate``, whose saved tensors nothing declares."""
    if position == "gate":
        pytest.importorskip("llm_modules_example")
    cfg, measured = PEAK_CONFIG.replace(position=position), measured_peaks[position, checkpointing, accumulate]
    setup = Setup(precision="32-true", batch_size=PEAK_BATCH, seq_len=PEAK_LENGTH,
                  activation_checkpointing=checkpointing, device="cpu", accumulate=accumulate)
    estimate = estimate_memory(cfg, "causal", count(cfg), setup)
    assert estimate.model_states == pytest.approx(count(cfg).total * 16)
    assert estimate.peak == pytest.approx(measured, rel=0.01), (estimate.phases, measured)
    if accumulate == 1:  # the gradients are not at the end of the forward
        with_grads = estimate_memory(cfg, "causal", count(cfg), dataclasses.replace(setup, accumulate=2))
        assert with_grads.phases["forward"] - estimate.phases["forward"] == estimate.gradients
    if position == "gate":  # the gate's tensors are in the estimate: more than with no position at all
        plain = estimate_memory(PEAK_CONFIG.replace(position="none"), "causal", count(cfg), setup)
        assert estimate.activations - plain.activations >= 2 * PEAK_BATCH * PEAK_LENGTH * cfg.d_model * 4


# ---- scaling laws and wall time ----------------------------------------------------------------------------


def test_chinchilla_optimum_for_gophers_budget_is_70b_parameters_on_1_4t_tokens():
    best = chinchilla_optimal(5.76e23)
    assert best.parameters == pytest.approx(70e9, rel=0.02)
    assert best.tokens == pytest.approx(1.4e12, rel=0.02)
    assert 6 * best.parameters * best.tokens == pytest.approx(5.76e23)


def test_chinchilla_approach_3_loss_and_its_optimum():
    assert chinchilla_loss(70e9, 1.4e12) == pytest.approx(1.94, abs=0.005)
    fit = chinchilla_fit_optimal(5.76e23)
    assert 6 * fit.parameters * fit.tokens == pytest.approx(5.76e23)
    for factor in (0.8, 1.25):  # a minimum along the budget's curve
        n = fit.parameters * factor
        assert chinchilla_loss(n, 5.76e23 / 6 / n) > chinchilla_loss(fit.parameters, fit.tokens)


def test_kaplan_laws():
    n = 1.5e9
    assert kaplan_loss(n) == pytest.approx((8.8e13 / n) ** 0.076)
    assert kaplan_loss(n, 1e30) == pytest.approx(kaplan_loss(n), rel=1e-6)  # data unlimited
    assert kaplan_loss(n, 1e9) > kaplan_loss(n, 1e11)
    pf_day = 8.64e19
    assert kaplan_optimal(pf_day).parameters == pytest.approx(1.3e9)


def test_wall_time_from_the_datasheet_peak():
    time = wall_time(3.14e23, "a100", "bf16-mixed", 0.5, 1024)
    assert time.peak_flops == 312e12
    assert time.seconds == pytest.approx(3.14e23 / (1024 * 312e12 * 0.5))
    with pytest.raises(ConfigError, match="choose one of"):
        wall_time(1e20, "tpu-v4", "bf16-mixed", 0.4, 1)
    with pytest.raises(ConfigError, match="no bf16 tensor cores"):
        wall_time(1e20, "v100", "bf16-mixed", 0.4, 1)


# ---- the command -------------------------------------------------------------------------------------------


def test_table_for_a_preset(capsys):
    code, out, err = run_cli(capsys, "--preset", "llama-7b", "--precision", "bf16-mixed", "--strategy", "zero3",
                             "--devices", "64", "--batch-size", "1", "--seq-len", "2048", "--tokens", "1T")
    assert code == 0, err
    assert "6,738,415,616" in out and "zero3" in out
    for heading in ("parameters", "compute", "memory per device", "peak per device by strategy", "scaling laws",
                    "wall time"):
        assert heading in out
    assert "1e+12" in out  # the tokens given


def test_json_to_stdout_and_to_a_file(capsys, tmp_path):
    target = tmp_path / "plan.json"
    code, out, err = run_cli(capsys, "--preset", "gpt2", "--format", "json", "--json", str(target),
                             "--lora-rank", "8", "--activation-checkpointing")
    assert code == 0, err
    report = json.loads(out)
    assert json.loads(target.read_text()) == report
    assert [p.name for p in tmp_path.iterdir()] == ["plan.json"]  # no temporary file left behind
    assert report["parameters"]["total"] == 124_439_808
    assert report["parameters"]["lora"] == 12 * 2 * 8 * (768 + 768)
    assert report["setup"]["activation_checkpointing"] is True
    assert set(report["memory_peak_by_strategy"]) == {"ddp", "zero1", "zero2", "zero3", "fsdp"}
    assert math.isclose(report["memory"]["peak"], max(report["memory"]["phases"].values()))
    # an existing file is replaced only with --overwrite, and the refusal comes before any work
    code, _, err = run_cli(capsys, "--preset", "gpt2", "--json", str(target))
    assert code == 2 and "--overwrite" in err and json.loads(target.read_text()) == report
    assert run_cli(capsys, "--preset", "gpt2", "--json", str(target), "--overwrite")[0] == 0


def test_the_command_starts_without_lightning():
    """Planning needs neither the trainer nor its imports (several seconds at every start)."""
    script = ("import json, sys\nfrom llm_modules.cli import main\n"
              "code = main(['estimate', '--preset', 'llama-tiny', '--format', 'json'])\n"
              "print(json.dumps({'code': code, 'lightning': sorted(m for m in sys.modules if m.startswith('lightning'))}))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"code": 0, "lightning": []}


def test_a_fit_config_supplies_the_run(capsys):
    code, out, err = run_cli(capsys, "--config", str(ROOT / "configs/quickstart.yaml"),
                             "--config", str(ROOT / "configs/strategies/fsdp.yaml"), "--devices", "8", "--format", "json")
    assert code == 0, err
    setup = json.loads(out)["setup"]
    assert (setup["seq_len"], setup["batch_size"], setup["precision"]) == (128, 16, "32-true")
    assert (setup["strategy"], setup["devices"], setup["activation_checkpointing"]) == ("fsdp", 8, True)


@pytest.mark.parametrize("argv, fragments", [
    (["--preset", "lama-7b"], ["unknown preset 'lama-7b'", "did you mean 'llama-7b'"]),
    (["--preset", "llama-7b", "--seq-len", "4096"], ["--seq-len 4096 exceeds", "max_seq_len 2048"]),
    (["--preset", "llama-7b", "--gpu", "tpu"], ["--gpu 'tpu'", "H100 SXM"]),
    (["--preset", "llama-7b", "--mfu", "1.5"], ["--mfu must be in (0, 1]"]),
    (["--preset", "llama-7b", "--devices", "0"], ["--devices must be a positive integer"]),
    (["--preset", "llama-7b", "--decoder-len", "64"], ["--decoder-len is for encoder-decoder"]),
    (["--preset", "llama-tiny", "--lora-rank", "4", "--lora-targets", "*.qq"], ["--lora-targets", "*.qq"]),
    (["--config", "no/such.yaml"], ["--config 'no/such.yaml'"]),
    (["--config", str(ROOT / "configs/finetune/lora.yaml")], ["init_from", "--preset"]),
])
def test_bad_input_is_one_line_and_exit_code_2(capsys, argv, fragments):
    code, _out, err = run_cli(capsys, *argv)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_the_table_says_what_the_trace_assumed(capsys, tmp_path):
    """A CUDA-only backend on this CPU machine and data-dependent routing: estimated, with notes."""
    pytest.importorskip("llm_modules_flash_attn")
    config = tmp_path / "model.yaml"
    config.write_text("vocab_size: 500\nd_model: 32\nn_layers: 2\nn_heads: 4\nmax_seq_len: 32\n"
                      "activation: {name: moe, n_experts: 4}\nattention: flash_attn\n")
    code, out, err = run_cli(capsys, "--config", str(config), "--device", "cpu")
    assert code == 0, err
    assert "(approximate: see the notes)" in out
    assert "note: MixtureOfExperts: routing assumed even over its 4 experts" in out
    assert "note: attention 'flash_attn' cannot run in the CPU trace" in out and "traced as 'sdpa'" in out


@pytest.mark.parametrize("name", [n for n in preset_names() if "layer_types" in preset_dir().joinpath(f"{n}.yaml").read_text()])
def test_models_whose_layers_differ_in_attention_span_are_estimated(name, capsys):
    """The trace runs fewer blocks than the model has: per-layer attention spans (layer_types, Gemma 2/3)
    keep the pattern's first layers for it, at the published size too."""
    assert main(["estimate", "--preset", name]) == 0
    assert "peak" in capsys.readouterr().out
