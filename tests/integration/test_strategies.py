"""Scale-out strategies on CPU processes over gloo: the same YAML on one process and on many.

One module-wide family of tiny runs (same model, data and global batch of 8 blocks; T5 relative
positions, so tensor parallelism must also split a per-head bias table) is started together and
awaited by name: one process (the reference), DDP on two "nodes" on loopback (two ranks, one
launch each), ModelParallelStrategy as data-parallel 2 and as tensor-parallel 2, block-wrapped FSDP, and DeepSpeed
ZeRO-3. Every multi-process run is the real CLI in a subprocess (DDP-style launchers re-execute the
command line); ``_strategy_probe.Probe`` reports what each rank holds once the strategy has set up.

Sharding and splitting change the order of floating-point sums, so trajectories cannot be compared
bitwise with one process. How far a mere change of summation order moves *this* run on *this* machine
(its kernels, its instruction set) is measured, not guessed: one more process trains the reference's
very samples as two accumulated micro-batches of 4 (same mathematics, other sums) and its weights'
distance from the reference is the noise floor (measured 1.2e-7; DDP was 3.2e-7, and once 1.3e-5 on
another machine, which a fixed 1e-5 failed). Strategies are held to 16 times that floor for weights and
256 times for per-step losses (a loss moves 1.5 times its weights' distance here); the errors they are
there to catch (a rank's gradient dropped or summed instead of averaged, a shard lost) move weights by
about 1e-3 and losses by about 1e-2, orders of magnitude above either bound. A resumed run is compared
bitwise with the uninterrupted one: same processes, same operations in the same order, so nothing may
differ at all.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import torch
import yaml

from llm_modules.cli import main
from llm_modules.registry import ConfigError

from _fit_helpers import CONFIGS, REPO, fit_here, free_port, launch, metric_rows, reap, tiny, write_corpus

QUICKSTART = CONFIGS / "quickstart.yaml"
PRESETS = sorted((CONFIGS / "strategies").glob("*.yaml"))
MODEL_PARALLEL = "lightning.pytorch.strategies.ModelParallelStrategy"
WEIGHT_NOISE_FACTOR, LOSS_NOISE_FACTOR = 16, 256
#: floor of the measured noise: 8 units in the last place of fp32 at 1.0 (the noise is never exactly 0 in
#: practice, but a run where it is must not demand bitwise equality of the strategies)
NOISE_FLOOR = 8 * 2.0 ** -23


class Runs:
    """Training subprocesses started at once and awaited by name, so their waits overlap."""

    def __init__(self, root: Path, corpus: Path, cache: Path):
        self.root, self.corpus, self.cache = root, corpus, cache
        self.procs: dict[str, tuple] = {}
        self.cwds: dict[str, Path] = {}  # of the runs made in this process
        self.done: dict[str, Path] = {}
        self._tolerances: tuple[float, float] | None = None

    def start(self, name: str, *extra: str, batch: int = 8, env: dict[str, str] | None = None) -> None:
        cwd, args = self._prepare(name, *extra, batch=batch)
        path = os.pathsep.join(filter(None, [str(REPO / "tests"), os.environ.get("PYTHONPATH")]))
        env = {"PYTHONPATH": path, "MASTER_PORT": str(free_port()), **(env or {})}
        self.procs[name] = (launch(["fit", *args], cwd, env=env, wait=False), cwd)

    def run_here(self, name: str, *extra: str, batch: int = 8) -> None:
        """A one-process run in this process (``fit_here``): the same command, without a process start."""
        cwd, args = self._prepare(name, *extra, batch=batch)
        fit_here(["fit", *args], cwd)
        self.cwds[name] = cwd
        self.done[name] = cwd / "runs" / "llm" / "version_0"

    def _prepare(self, name: str, *extra: str, batch: int) -> tuple[Path, list[str]]:
        cwd = self.root / name
        cwd.mkdir()
        probe = cwd / "probe.yaml"
        probe.write_text(yaml.safe_dump({"trainer": {"callbacks": [
            {"class_path": "_strategy_probe.Probe", "init_args": {"out": str(cwd / "probe")}}]}}))
        args = tiny(
            QUICKSTART, self.corpus, self.cache,
            "--model.init_args.config.d_ff", "64",  # divisible by the tensor-parallel size
            "--model.init_args.config.position", "t5",
            "--data.init_args.batch_size", str(batch),
            "--trainer.accelerator", "cpu",
            "--trainer.log_every_n_steps", "1",
            "--config", str(probe), *extra, steps=8,
        )
        return cwd, args

    def wait(self, name: str) -> Path:
        """The run's folder (``runs/llm/version_0`` under its working directory) once it has exited 0."""
        if name not in self.done:
            proc, cwd = self.procs[name]
            out, _ = proc.communicate(timeout=400)
            assert proc.returncode == 0, f"{name}: exit {proc.returncode}\n{out[-6000:]}"
            self.done[name] = cwd / "runs" / "llm" / "version_0"
        return self.done[name]

    def probe(self, name: str, rank: int = 0) -> dict:
        self.wait(name)
        cwd = self.cwds[name] if name in self.cwds else self.procs[name][1]
        return json.loads((cwd / "probe" / f"rank{rank}.json").read_text())

    def stop(self) -> None:
        for proc, _ in self.procs.values():
            reap(proc)

    def tolerances(self, tmp_path: Path) -> tuple[float, float]:
        """(weights, per-step loss) tolerances from the summation-order noise floor (module docstring)."""
        if self._tolerances is None:
            self._tolerances = self._measure_tolerances(tmp_path)
        return self._tolerances

    def _measure_tolerances(self, tmp_path: Path) -> tuple[float, float]:
        one = weights(self.wait("one") / "checkpoints" / "last.ckpt", tmp_path)
        other = weights(self.wait("reordered") / "checkpoints" / "last.ckpt", tmp_path)
        noise = max(NOISE_FLOOR, max(float((one[k] - other[k]).abs().max()) for k in one))
        # a reordered run that trained on other data (a broken calibration) would excuse every error
        assert noise < 1e-5, f"the summation-order noise floor {noise:.2e} is implausibly large"
        return WEIGHT_NOISE_FACTOR * noise, LOSS_NOISE_FACTOR * noise


def model_parallel(data: int, tensor: int) -> list[str]:
    return ["--trainer.strategy", MODEL_PARALLEL, "--trainer.strategy.data_parallel_size", str(data),
            "--trainer.strategy.tensor_parallel_size", str(tensor), "--trainer.devices", str(data * tensor),
            "--trainer.val_check_interval", "4"]  # a checkpoint at step 4 (named by its val/loss) to resume from


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("strategies")
    family = Runs(root, write_corpus(root / "corpus"), root / "cache")
    try:
        # the reference, in this process (one process: nothing to launch); it also trains the tokenizer
        # and fills the token cache, which the others then only read
        family.run_here("one")
        port = str(free_port())
        for node in (0, 1):
            family.start(f"node{node}", "--trainer.strategy", "ddp", "--trainer.num_nodes", "2",
                         "--trainer.devices", "1", batch=4,
                         env={"NODE_RANK": str(node), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port})
        family.start("dp2", *model_parallel(2, 1), batch=4)
        family.start("tp2", *model_parallel(1, 2), batch=8)  # both ranks read the same 8 blocks
        family.start("fsdp", "--config", str(CONFIGS / "strategies" / "fsdp.yaml"), "--trainer.devices", "2",
                     batch=4)
        remove_stale_build_locks()
        family.start("zero3", "--config", str(CONFIGS / "strategies" / "deepspeed-zero3.yaml"),
                     "--trainer.strategy.class_path", "_strategy_probe.CPUDeepSpeedStrategy",
                     "--trainer.devices", "2", batch=4)
        family.run_here("reordered", "--trainer.accumulate_grad_batches", "2", batch=4)  # the noise floor
        yield family
    finally:
        family.stop()


def remove_stale_build_locks(older_than: float = 600.0) -> None:
    """Remove the lock files of torch extension builds that were killed midway.

    DeepSpeed builds its CPU ops on first use, under a lock file that the build removes when it
    ends; a build killed midway (a test run interrupted while the zero3 run compiled) leaves the lock
    behind, and every later build then waits on it for ever. A build here takes about a minute, so a
    lock ten minutes old belongs to no running build.
    """
    from torch.utils.cpp_extension import get_default_build_root

    root = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root())
    for lock in [*root.glob("*/*/lock"), *root.glob("*/*/.ninja_lock")]:
        if time.time() - lock.stat().st_mtime > older_than:
            lock.unlink(missing_ok=True)


def losses(run: Path) -> dict[int, float]:
    return dict(metric_rows(run, "train/loss"))


def assert_same_curve(run: Path, runs: Runs, tmp_path: Path) -> None:
    """``run``'s per-step training losses are the reference's, within the measured noise."""
    ours, ref = losses(run), losses(runs.wait("one"))
    tolerance = runs.tolerances(tmp_path)[1]
    assert sorted(ours) == sorted(ref) == list(range(8)), (ours, ref)
    worst = max(abs(ours[s] - ref[s]) for s in ref)
    assert worst <= tolerance, (worst, ours, ref)


def weights(checkpoint: Path, tmp_path: Path) -> dict[str, torch.Tensor]:
    """The model weights of a checkpoint file, or of a distributed checkpoint folder (one file per rank)."""
    if checkpoint.is_dir():
        from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

        single = tmp_path / (checkpoint.as_posix().strip("/").replace("/", "_") + ".pt")
        dcp_to_torch_save(checkpoint, single)
        checkpoint = single
    return torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]


def test_model_parallel_data_and_tensor_parallel_train_and_resume_exactly(runs, tmp_path):
    """FSDP2 (dp=2) and tensor parallelism (tp=2) follow the one-process curve; both write distributed
    checkpoints, and resuming tp=2 from its step-4 checkpoint through ``--ckpt_path`` replays steps
    5-8 bit for bit. (dp=2 resumes through the same ModelParallelStrategy and DCP code; it is left out
    to keep the suite's process count down.)"""
    for name in ("dp2", "tp2"):
        run = runs.wait(name)
        assert_same_curve(run, runs, tmp_path)
        (step4,) = (run / "checkpoints").glob("step4-*.ckpt")
        assert step4.is_dir() and (step4 / "meta.pt").is_file(), "a distributed checkpoint is a folder"
        meta = torch.load(step4 / "meta.pt", weights_only=True)  # our on_save_checkpoint additions survive
        assert meta["model_kind"] == "CausalLM" and meta["hyper_parameters"]["config"]["d_ff"] == 64
        assert isinstance(meta["tokenizer"], bytes) and meta["global_step"] == 4
        if name == "tp2":
            runs.start("tp2-resumed", *model_parallel(1, 2), "--ckpt_path", str(step4), batch=8)

    # Last mesh dimension = tensor parallel. (The root unit's parameters show unsharded over the data-
    # parallel mesh here: FSDP2 does not reshard the root after the validation forward.)
    tp, placement = runs.probe("tp2"), lambda name: (tp["mesh"][name][-1], tp["placements"][name][-1])
    assert tp["mesh"]["model.stack.layers.0.attn.q.weight"] == ["data_parallel", "tensor_parallel"]
    assert placement("model.stack.layers.0.attn.q.weight") == ("tensor_parallel", "Shard(dim=0)")  # heads
    assert placement("model.stack.layers.0.attn.o.weight") == ("tensor_parallel", "Shard(dim=1)")
    assert placement("model.stack.layers.0.ffn.down.weight") == ("tensor_parallel", "Shard(dim=1)")
    assert placement("model.embed.tokens.weight") == ("tensor_parallel", "Replicate()")
    assert placement("model.stack.position.table.weight") == ("tensor_parallel", "Shard(dim=1)")  # bias heads
    assert runs.probe("dp2")["fsdp2_units"].count("Block") == 4

    whole, resumed = runs.wait("tp2"), runs.wait("tp2-resumed")
    tail = {s: v for s, v in losses(whole).items() if s >= 4}
    assert losses(resumed) == tail
    a = weights(whole / "checkpoints" / "last.ckpt", tmp_path)
    b = weights(resumed / "checkpoints" / "last.ckpt", tmp_path)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_ddp_on_two_nodes_on_loopback_follows_one_process_with_the_same_global_batch(runs, tmp_path):
    """``--trainer.strategy ddp --trainer.num_nodes 2``, one launch per node (NODE_RANK, MASTER_ADDR,
    MASTER_PORT), 4 blocks per rank: the one-process curve and weights; only node 0 writes logs and
    checkpoints. (Two devices on one node are the other multi-process runs' launch path.)"""
    one, node0, node1 = runs.wait("one"), runs.wait("node0"), runs.wait("node1")
    assert_same_curve(node0, runs, tmp_path)
    a = weights(one / "checkpoints" / "last.ckpt", tmp_path)
    b = weights(node0 / "checkpoints" / "last.ckpt", tmp_path)
    assert a.keys() == b.keys()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= runs.tolerances(tmp_path)[0]
    assert runs.probe("node0")["world_size"] == runs.probe("node1", rank=1)["world_size"] == 2
    assert not node1.parent.parent.exists(), "node 1 wrote a run folder of its own"


def test_fsdp_preset_wraps_and_checkpoints_each_block_and_trains_like_one_process(runs, tmp_path):
    full = runs.probe("one")["local_numel"]
    shards = []
    for rank in (0, 1):
        probe = runs.probe("fsdp", rank)
        assert probe["strategy"] == "BlockFSDPStrategy"
        assert probe["fsdp1_units"] == ["CausalLM"] + ["Block"] * 4  # root unit + one per block
        assert probe["checkpointed"] == ["Block"] * 4
        shards.append(probe["local_numel"])
    assert sum(shards) == full and max(shards) < full, (shards, full)
    run = runs.wait("fsdp")
    assert_same_curve(run, runs, tmp_path)
    last = run / "checkpoints" / "last.ckpt"
    assert last.is_dir() and len(list(last.glob("*.distcp"))) == 2, "sharded state dict: one file per rank"


def test_deepspeed_zero3_partitions_parameters_and_trains_like_one_process(runs, tmp_path):
    """Lightning's DeepSpeedStrategy with the zero3 preset, minus its CUDA-only checks."""
    one = runs.probe("one")
    full = one["local_numel"]
    for rank in (0, 1):
        zero = runs.probe("zero3", rank)["deepspeed"]
        assert zero["all_have_ds_id"] and zero["status"] == ["ZeroParamStatus.NOT_AVAILABLE"]
        assert zero["full_numel"] == full and zero["visible_numel"] == 0
        # half each, give or take the rounding of each parameter's split
        assert abs(zero["partition_numel"] - full / 2) <= one["parameters"], zero
    assert_same_curve(runs.wait("zero3"), runs, tmp_path)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs (the presets' own setting)")
@pytest.mark.parametrize("strategy", [
    ["--trainer.strategy", "fsdp"],
    *(["--config", str(CONFIGS / "strategies" / f"{name}.yaml")]
      for name in ("deepspeed-zero1", "deepspeed-zero2", "deepspeed-zero3", "deepspeed-zero3-offload")),
], ids=lambda args: Path(args[-1]).stem)
def test_gpu_presets_train_as_shipped(strategy, tmp_path):
    """What CPU cannot show: Lightning's unmodified classes and names on GPUs, a few steps each."""
    corpus = write_corpus(tmp_path / "corpus")
    args = tiny(QUICKSTART, corpus, tmp_path / "cache", "--trainer.accelerator", "gpu", "--trainer.devices", "2",
                "--trainer.log_every_n_steps", "1", *strategy, steps=4)
    launch(["fit", *args], tmp_path, env={"MASTER_PORT": str(free_port())}, timeout=600)
    run = tmp_path / "runs" / "llm" / "version_0"
    curve = losses(run)
    assert sorted(curve) == [0, 1, 2, 3] and all(v == v and v < 20 for v in curve.values()), curve
    assert (run / "checkpoints" / "last.ckpt").exists()


# ---- presets, names and refusals (in this process) -----------------------------------------------------------


def _block_policy(strategy) -> set:
    return set(strategy.kwargs["auto_wrap_policy"]._module_classes)


EXPECTED = {
    "ddp": ("DDPStrategy", lambda s: s._ddp_kwargs["find_unused_parameters"] is False),
    "fsdp": ("BlockFSDPStrategy", lambda s: s._state_dict_type == "sharded" and s._activation_checkpointing_kwargs),
    "fsdp-full-state": ("BlockFSDPStrategy", lambda s: s._state_dict_type == "full"),
    "model-parallel": ("ModelParallelStrategy",
                       lambda s: (s._data_parallel_size, s._tensor_parallel_size, s._save_distributed_checkpoint)
                       == ("auto", "auto", True)),
    "pipeline": ("PipelineParallelStrategy", lambda s: (
        s._pipeline_parallel_size, s._data_parallel_size, s._tensor_parallel_size, s._pipeline_options["schedule"],
        s._save_distributed_checkpoint) == ("auto", "auto", 1, "1f1b", True)),
    "3d": ("PipelineParallelStrategy", lambda s: (
        s._pipeline_parallel_size, s._data_parallel_size, s._tensor_parallel_size) == (2, "auto", 2)),
    "deepspeed-zero1": ("DeepSpeedStrategy", lambda s: s.config["zero_optimization"]["stage"] == 1),
    "deepspeed-zero2": ("DeepSpeedStrategy", lambda s: s.config["zero_optimization"]["stage"] == 2),
    "deepspeed-zero3": ("DeepSpeedStrategy", lambda s: s.zero_stage_3),
    "deepspeed-zero3-offload": ("DeepSpeedStrategy", lambda s: s.zero_stage_3 and s.config["zero_optimization"][
        "offload_optimizer"]["device"] == s.config["zero_optimization"]["offload_param"]["device"] == "cpu"
        and s.config["zero_force_ds_cpu_optimizer"] is False),
}


def printed_config(out: str) -> dict:
    """The YAML that ``--print_config`` printed. DeepSpeed logs to stdout when imported (here: "Setting
    accelerator to CPU"), so anything before the dump's header line is dropped."""
    return yaml.safe_load(out[out.index("# lightning.pytorch=="):])


def test_every_strategy_preset_parses_and_builds_its_strategy(tmp_path, monkeypatch, capsys):
    """Each YAML under configs/strategies on top of the quickstart: ``--print_config`` through the real
    CLI, then the trainer that LightningCLI builds from the same arguments holds the right strategy."""
    from lightning import LightningDataModule

    from llm_modules.cli.train import LLMCLI, trainer_defaults
    from llm_modules.models import LanguageModel
    from llm_modules.nn.transformer import Block

    assert {p.stem for p in PRESETS} == set(EXPECTED), "every shipped preset is checked here"
    monkeypatch.chdir(tmp_path)
    for preset in PRESETS:
        head = yaml.safe_load(preset.read_text())
        assert set(head) == {"trainer"}, f"{preset.name}: a strategy preset holds only a trainer section"
        args = ["--config", str(QUICKSTART), "--config", str(preset), "--trainer.accelerator", "cpu"]
        assert main(["fit", *args, "--print_config"]) == 0, preset.name
        printed = printed_config(capsys.readouterr().out)
        assert printed["trainer"]["strategy"]["class_path"] == head["trainer"]["strategy"]["class_path"]
        cli = LLMCLI(LanguageModel, LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                     args=["--trainer.devices", "4" if preset.stem == "3d" else "2", *args],  # 3d: pp 2 x tp 2
                     trainer_defaults=trainer_defaults(), run=False,
                     auto_configure_optimizers=False)
        strategy = cli.trainer.strategy
        name, settings_hold = EXPECTED[preset.stem]
        assert type(strategy).__name__ == name, preset.name
        assert settings_hold(strategy), (preset.name, vars(strategy))
        if name == "BlockFSDPStrategy":
            assert _block_policy(strategy) == {Block}


def test_shipped_presets_are_found_by_short_name_from_any_folder(tmp_path, monkeypatch, capsys):
    """``--config strategies/fsdp`` anywhere, and the documented ``configs/...yaml`` paths outside a checkout."""
    monkeypatch.chdir(tmp_path)
    for quickstart, strategy in (("quickstart", "strategies/fsdp"),
                                 ("configs/quickstart.yaml", "configs/strategies/deepspeed-zero3.yaml")):
        assert main(["fit", "--config", quickstart, "--config", strategy, "--print_config"]) == 0
        printed = printed_config(capsys.readouterr().out)
        assert printed["model"]["class_path"] == "llm_modules.CausalLM"
        assert printed["trainer"]["strategy"]["class_path"].endswith(
            "BlockFSDPStrategy" if "fsdp" in strategy else "DeepSpeedStrategy")
    assert main(["fit", "--config", "strategies/nonesuch"]) == 2
    assert "--config strategies/nonesuch" in capsys.readouterr().err


def test_the_fsdp_name_means_block_wrapped_fsdp_and_still_needs_a_gpu():
    from lightning import Trainer
    from lightning.pytorch.strategies import StrategyRegistry

    from llm_modules.nn.transformer import Block
    from llm_modules.training.strategies import BlockFSDPStrategy

    fsdp = StrategyRegistry.get("fsdp")
    assert isinstance(fsdp, BlockFSDPStrategy) and _block_policy(fsdp) == {Block}
    assert fsdp._state_dict_type == "full" and fsdp._activation_checkpointing_kwargs
    assert StrategyRegistry.get("fsdp_cpu_offload").cpu_offload.offload_params
    with pytest.raises(ValueError, match="requires a GPU"):
        Trainer(strategy="fsdp", accelerator="cpu", devices=2, logger=False)


def _tiny_lm(**overrides):
    from llm_modules import CausalLM, ModelConfig

    base = dict(vocab_size=64, d_model=32, n_layers=1, n_heads=4, n_kv_heads=4, d_ff=64, max_seq_len=32)
    return CausalLM(ModelConfig(**{**base, **overrides}))


@pytest.mark.parametrize("overrides, size, field", [
    ({"n_heads": 4, "n_kv_heads": 4}, 3, "n_heads"),
    ({"n_heads": 8, "n_kv_heads": 2}, 4, "n_kv_heads"),
    ({"d_ff": 66}, 4, "d_ff"),
    ({"activation": {"name": "moe", "n_experts": 2, "top_k": 1}}, 2, "activation"),
])
def test_tensor_parallel_refuses_what_it_cannot_split(overrides, size, field):
    from llm_modules.training.parallel import check_tensor_parallel

    lm = _tiny_lm(**overrides)
    with pytest.raises(ConfigError) as err:
        check_tensor_parallel(lm.model, size)
    message = str(err.value)
    assert f"model.config.{field}" in message and "tensor_parallel_size" in message, message


@pytest.mark.parametrize("position", ["rope", "alibi", "t5", "learned"])
def test_tensor_parallel_accepts_every_built_in_position_encoding(position):
    from llm_modules.training.parallel import check_tensor_parallel

    lm = _tiny_lm(position=position, n_heads=4, n_kv_heads=2)
    check_tensor_parallel(lm.model, 2)
