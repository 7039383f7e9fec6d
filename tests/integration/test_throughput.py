"""Throughput monitor: PaLM FLOPs per token against hand counts, the peak-FLOPs table, the
world-size / tensor-parallel / accumulation bookkeeping, the CPU measurement, the figures a fit
writes to metrics.csv, and the MFU benchmark script on CPU."""

from __future__ import annotations

import importlib.util
import json
import math
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from llm_modules import ModelConfig
from llm_modules.cli import main
from llm_modules.training.throughput import (
    ThroughputMonitor,
    flops_per_token,
    gpu_peak_flops,
    lookup_gpu,
    measure_matmul_flops,
    peak_flops,
)

from _fit_helpers import CONFIGS, REPO, metric_rows, tiny, write_corpus

# ---- FLOPs per token ----------------------------------------------------------------------------------------


def test_llama_style_flops_match_a_hand_count():
    d, L, H, KV, Q, ff, V, T = 64, 2, 4, 2, 16, 172, 512, 128
    cfg = ModelConfig(vocab_size=V, d_model=d, n_layers=L, n_heads=H, n_kv_heads=KV, d_ff=ff, norm="rmsnorm",
                      activation="swiglu", position="rope", bias=False, tie_embeddings=False, max_seq_len=T)
    # q, k, v, o; gate/up/down; two RMSNorm weights per block; final norm; head (embedding table: none)
    n = L * (d * H * Q + 2 * d * KV * Q + H * Q * d + 3 * d * ff + 2 * d) + d + d * V
    assert flops_per_token(cfg, T) == 6 * n + 12 * L * H * Q * T
    # Tied: the table lookup is still free, the head matmul still costs d*V per token.
    assert flops_per_token(cfg.replace(tie_embeddings=True), T) == 6 * n + 12 * L * H * Q * T


def test_gpt2_style_flops_leave_out_learned_positions_and_count_biases_and_the_tied_head():
    d, L, H, ff, V, T = 32, 3, 4, 128, 100, 64
    cfg = ModelConfig(vocab_size=V, d_model=d, n_layers=L, n_heads=H, d_ff=ff, norm="layernorm", activation="gelu",
                      position="learned", bias=True, tie_embeddings=True, max_seq_len=T)
    n = L * (4 * (d * d + d) + d * ff + ff + ff * d + d + 2 * 2 * d) + 2 * d + d * V
    assert flops_per_token(cfg, T) == 6 * n + 12 * L * H * (d // H) * T


def test_mixture_of_experts_counts_the_experts_a_token_runs():
    d, L, H, ff, V, T, experts, k = 32, 2, 4, 64, 100, 32, 4, 1
    moe = {"name": "moe", "expert": "swiglu", "n_experts": experts, "top_k": k}
    cfg = ModelConfig(vocab_size=V, d_model=d, n_layers=L, n_heads=H, d_ff=ff, norm="rmsnorm", activation=moe,
                      position="rope", bias=False, tie_embeddings=False, max_seq_len=T)
    n = L * (4 * d * d + d * experts + k * 3 * d * ff + 2 * d) + d + d * V
    assert flops_per_token(cfg, T) == 6 * n + 12 * L * H * (d // H) * T


def test_encoder_decoder_flops_per_encoder_and_decoder_token():
    d, Le, Ld, H, ff, V, Te, Td = 32, 2, 3, 4, 64, 100, 40, 24
    cfg = ModelConfig(vocab_size=V, d_model=d, n_layers=Ld, n_encoder_layers=Le, n_heads=H, d_ff=ff,
                      norm="rmsnorm", activation="gelu", position="t5", bias=False, tie_embeddings=False)
    n_enc = Le * (4 * d * d + 2 * d * ff + 2 * d) + d  # relative-bias bucket tables: lookups, left out
    cross_kv = Ld * 2 * d * d  # run over the encoder's Te outputs
    n_dec = Ld * (4 * d * d + 2 * d * d + 2 * d * ff + 3 * d) + d + d * V
    attention = 12 * d * (Le * Te * Te + Ld * (Td * Td + Td * Te))
    total = 6 * n_enc * Te + 6 * n_dec * Td + 6 * cross_kv * Te + attention
    assert flops_per_token(cfg, Te, decoder_len=Td) == pytest.approx(total / (Te + Td), rel=1e-12)


def test_llama_350m_preset_is_about_350m_and_has_its_palm_flops():
    cfg = ModelConfig.from_preset("llama-350m")
    n = 24 * (4 * 1024 * 1024 + 3 * 1024 * 2816 + 2 * 1024) + 1024 + 1024 * 32000
    assert flops_per_token(cfg, 2048) == 6 * n + 12 * 24 * 16 * 64 * 2048
    assert 3.4e8 < n + 1024 * 32000 < 3.8e8


# ---- peaks ---------------------------------------------------------------------------------------------------

NAMES = {  # torch.cuda.get_device_name() strings -> table row
    "NVIDIA H100 80GB HBM3": "H100 SXM", "NVIDIA H100 PCIe": "H100 PCIe", "NVIDIA H100 NVL": "H100 NVL",
    "NVIDIA H200": "H200 SXM", "NVIDIA H200 NVL": "H200 NVL", "NVIDIA GH200 480GB": "GH200",
    "NVIDIA A100-SXM4-80GB": "A100", "NVIDIA A100-SXM4-40GB": "A100", "NVIDIA A100-PCIE-40GB": "A100",
    "NVIDIA A100 80GB PCIe": "A100", "NVIDIA A10G": "A10G", "NVIDIA A10": "A10", "NVIDIA L4": "L4",
    "NVIDIA L40S": "L40S", "NVIDIA L40": "L40", "Tesla V100-SXM2-16GB": "V100 SXM2",
    "Tesla V100-PCIE-32GB": "V100 PCIe", "Tesla V100S-PCIE-32GB": "V100S PCIe",
    "NVIDIA GeForce RTX 4090": "RTX 4090", "AMD Instinct MI300X": "MI300X",
}


def test_gpu_names_find_their_table_row():
    assert {name: getattr(lookup_gpu(name), "name", None) for name in NAMES} == NAMES
    assert lookup_gpu("NVIDIA GeForce GTX 1080") is None


def test_peak_follows_the_precision(monkeypatch):
    h100 = "NVIDIA H100 80GB HBM3"
    assert gpu_peak_flops(h100, "bf16-mixed") == gpu_peak_flops(h100, "bf16-true") == 989.4e12
    assert gpu_peak_flops(h100, "transformer-engine") == 1978.9e12
    assert gpu_peak_flops("NVIDIA A100-SXM4-80GB", "32-true") == 19.5e12  # float32 matmuls: no TF32
    default = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("high")  # TF32 tensor cores allowed
        assert gpu_peak_flops("NVIDIA A100-SXM4-80GB", "32-true") == 156e12
    finally:
        torch.set_float32_matmul_precision(default)
    assert gpu_peak_flops("Tesla V100-SXM2-16GB", "16-mixed") == 125e12
    assert gpu_peak_flops("Tesla V100-SXM2-16GB", "bf16-mixed") is None  # Volta has no bf16 tensor cores


def test_an_unknown_gpu_gives_none_and_a_reason_not_a_crash(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA Imaginary X1")
    value, why = peak_flops(torch.device("cuda", 0), "bf16-mixed")
    assert value is None and "NVIDIA Imaginary X1" in why
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 PCIe")
    assert peak_flops(torch.device("cuda", 0), "bf16-mixed") == (756.5e12, "H100 PCIe datasheet, bf16 dense")


def test_cpu_peak_is_measured_quickly_in_the_training_dtype():
    start = time.perf_counter()
    fp32 = measure_matmul_flops(torch.float32, budget_s=0.1)
    assert time.perf_counter() - start < 2.0
    assert 1e8 < fp32 < 1e14
    value, why = peak_flops(torch.device("cpu"), "bf16-mixed")
    assert value > 0 and why == "measured bfloat16 matmul on this CPU"


# ---- bookkeeping ----------------------------------------------------------------------------------------------


class FakeModule:
    """What the monitor reads from a LightningModule, and a ``log`` that records."""

    def __init__(self, config):
        self.config, self.device, self.model, self.logged = config, torch.device("cpu"), None, {}

    def log(self, key, value, **kwargs):
        self.logged[key] = value


def fake_trainer(world_size=1, replicas=None):
    kwargs = {} if replicas is None else {"num_replicas": replicas, "rank": 0}
    return SimpleNamespace(
        world_size=world_size, global_rank=0, global_step=0, precision="32-true", is_global_zero=True,
        log_every_n_steps=50, sanity_checking=False, strategy=SimpleNamespace(distributed_sampler_kwargs=kwargs),
    )


def run_steps(monitor, trainer, module, steps, micro_batches=1, pause=0.0, rows=2, length=16):
    batch = {"input_ids": torch.zeros(rows, length, dtype=torch.long)}
    for _ in range(steps):
        for _ in range(micro_batches):
            monitor.on_train_batch_start(trainer, module, batch, 0)
            time.sleep(0.01)
            if _ == micro_batches - 1:
                trainer.global_step += 1  # the optimizer steps after the last micro-batch
            monitor.on_train_batch_end(trainer, module, None, batch, 0)
        if pause:
            monitor.on_validation_start(trainer, module)
            time.sleep(pause)


def test_counts_all_replicas_and_accumulated_micro_batches_and_skips_warmup_and_validation():
    cfg = ModelConfig.from_preset("llama-tiny")
    per_token = flops_per_token(cfg, 16)
    results = {}
    for label, world, replicas in (("one", 1, None), ("ddp4", 4, None), ("tp2xdp2", 4, 2)):
        monitor, trainer, module = ThroughputMonitor(peak_tflops=1.0), fake_trainer(world, replicas), FakeModule(cfg)
        monitor.on_train_start(trainer, module)
        run_steps(monitor, trainer, module, steps=4, micro_batches=2, pause=0.15)
        assert len(monitor._steps) == 3  # the first step is warm-up
        assert all(tokens == 2 * 2 * 16 for tokens, _, _ in monitor._steps)  # both micro-batches
        assert all(seconds < 0.1 for _, _, seconds in monitor._steps)  # validation's 0.15 s left out
        results[label] = module.logged
    one, ddp, tp = results["one"], results["ddp4"], results["tp2xdp2"]
    for logged in results.values():
        assert logged["perf/flops_per_token"] == pytest.approx(per_token)
        assert logged["perf/mfu"] == pytest.approx(logged["perf/tflops_per_s"])  # peak given as 1 TFLOP/s
    # Four data-parallel replicas: four times the tokens, the same work per device.
    assert ddp["perf/tokens_per_s"] / ddp["perf/tflops_per_s"] == pytest.approx(
        4 * one["perf/tokens_per_s"] / one["perf/tflops_per_s"])
    # Two replicas of two tensor-parallel ranks: twice the tokens, each batch's work split over two devices.
    assert tp["perf/tokens_per_s"] / tp["perf/tflops_per_s"] == pytest.approx(
        4 * one["perf/tokens_per_s"] / one["perf/tflops_per_s"])
    assert tp["perf/tokens_per_s"] * per_token / 4 / 1e12 == pytest.approx(tp["perf/tflops_per_s"])


def test_cpu_peak_keeps_the_best_rate_measured_once_per_window(monkeypatch):
    """A busy moment at fit start would otherwise understate the peak for the whole run."""
    from llm_modules.training import model_flops, throughput

    rates = iter([1e9, 5e9, 2e9, 3e9])
    measure = lambda dtype, budget_s=0.25: next(rates)  # noqa: E731
    monkeypatch.setattr(model_flops, "measure_matmul_flops", measure)  # the first, through peak_flops
    monkeypatch.setattr(throughput, "measure_matmul_flops", measure)  # once per window
    monitor, trainer, module = ThroughputMonitor(window=2), fake_trainer(), FakeModule(ModelConfig.from_preset("llama-tiny"))
    monitor.on_train_start(trainer, module)
    assert monitor.peak == 1e9
    run_steps(monitor, trainer, module, steps=6)  # windows complete at steps 2, 4, 6
    assert monitor.peak == 5e9
    assert module.logged["perf/mfu"] == pytest.approx(module.logged["perf/tflops_per_s"] * 1e12 / 5e9)


# ---- end to end -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus"), files=20)


def test_a_fit_logs_throughput_and_mfu_in_the_rows_of_train_loss(corpus, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = tiny(CONFIGS / "quickstart.yaml", corpus, tmp_path / "cache", "--trainer.log_every_n_steps", "3", steps=9)
    assert main(["fit", *args]) == 0
    run = tmp_path / "runs" / "llm" / "version_0"
    mfu = metric_rows(run, "perf/mfu")
    loss_steps = [step for step, _ in metric_rows(run, "train/loss")]
    assert [step for step, _ in mfu] == loss_steps == [2, 5, 8]
    assert all(0 < value <= 1 for _, value in mfu), mfu
    assert all(v > 0 for _, v in metric_rows(run, "perf/tokens_per_s"))
    quickstart = yaml.safe_load((CONFIGS / "quickstart.yaml").read_text())["model"]["init_args"]["config"]
    cfg = ModelConfig.from_dict({**quickstart, "vocab_size": 320, "d_model": 32, "max_seq_len": 64})  # tiny()'s
    logged = metric_rows(run, "perf/flops_per_token")[-1][1]
    assert logged == pytest.approx(flops_per_token(cfg, 32), rel=1e-6)
    assert metric_rows(run, "train/tokens_seen")[-1][1] == 9 * 8 * 32


def test_a_throughput_monitor_given_by_the_user_replaces_the_default(corpus, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = tiny(CONFIGS / "quickstart.yaml", corpus, tmp_path / "cache", "--trainer.log_every_n_steps", "2",
                "--trainer.callbacks+=llm_modules.training.throughput.ThroughputMonitor",
                "--trainer.callbacks.peak_tflops", "0.5", steps=4)
    assert main(["fit", *args]) == 0
    run = tmp_path / "runs" / "llm" / "version_0"
    mfu, achieved = metric_rows(run, "perf/mfu"), metric_rows(run, "perf/tflops_per_s")
    assert mfu and all(m == pytest.approx(a / 0.5, rel=1e-5) for (_, m), (_, a) in zip(mfu, achieved))


def test_the_mfu_benchmark_runs_on_cpu(tmp_path):
    spec = importlib.util.spec_from_file_location("mfu_benchmark", REPO / "benchmarks" / "mfu.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "mfu.json"
    assert bench.main(["--preset", "llama-tiny", "--seq-len", "64", "--batch-size", "4", "--steps", "4",
                       "--warmup", "1", "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    assert results["precision"] == "bf16-mixed" and results["steps_timed"] == 3
    assert results["flops_per_token"] == pytest.approx(flops_per_token(ModelConfig.from_preset("llama-tiny"), 64))
    assert 0 < results["mfu"] <= 1 and results["tokens_per_s"] > 0 and math.isfinite(results["final_loss"])
    assert results["mfu"] == pytest.approx(results["tflops_per_s"] / results["peak_tflops"], rel=1e-9)
    assert math.isclose(results["tflops_per_s"] * 1e12, results["tokens_per_s"] * results["flops_per_token"],
                        rel_tol=1e-6)


# ---- on a GPU (skipped without CUDA) -------------------------------------------------------------------------

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@needs_cuda
def test_on_this_gpu_the_table_has_a_peak_and_the_benchmark_gives_a_sane_mfu(tmp_path):
    name = torch.cuda.get_device_name()
    assert lookup_gpu(name) is not None, f"add {name!r} to llm_modules.training.throughput.PEAKS"
    spec = importlib.util.spec_from_file_location("mfu_benchmark", REPO / "benchmarks" / "mfu.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "mfu.json"
    assert bench.main(["--preset", "llama-350m", "--seq-len", "1024", "--batch-size", "4", "--steps", "8",
                       "--warmup", "3", "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    assert results["device"] == name and 0.05 < results["mfu"] <= 1 and math.isfinite(results["final_loss"]), results


@needs_cuda
@pytest.mark.skipif(importlib.util.find_spec("transformer_engine") is None, reason="needs NVIDIA Transformer Engine")
def test_fp8_trains_through_transformer_engine(tmp_path):
    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("FP8 needs compute capability 8.9+ (Ada, Hopper)")
    spec = importlib.util.spec_from_file_location("mfu_benchmark", REPO / "benchmarks" / "mfu.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "mfu.json"
    assert bench.main(["--preset", "llama-350m", "--seq-len", "512", "--batch-size", "4", "--steps", "6",
                       "--warmup", "2", "--precision", "transformer-engine", "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    assert results["precision"] == "transformer-engine" and 0 < results["mfu"] <= 1, results
    assert math.isfinite(results["final_loss"]), results
