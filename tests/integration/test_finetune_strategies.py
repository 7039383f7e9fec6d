"""LoRA under DDP and FSDP: two CPU processes over gloo each, through the real CLI in subprocesses.

The three runs (DDP; block-wrapped FSDP gathering one checkpoint file; FSDP writing sharded folders)
start together and are awaited in turn, two steps each. A one-file checkpoint is adapter-only and
loads back onto its base; a sharded folder keeps every tensor, because its loader expects each one
back (``models.finetuning``).
"""

from __future__ import annotations

import os

import pytest
import torch

from llm_modules.checkpoint import load_checkpoint

from _finetune_helpers import INSTRUCTIONS, base  # noqa: F401  (base: the fixture)
from _fit_helpers import CONFIGS, REPO, free_port, launch, metric_rows, reap

RUNS = {
    "ddp": ["--trainer.strategy", "ddp"],
    "fsdp": ["--config", str(CONFIGS / "strategies" / "fsdp-full-state.yaml")],
    "fsdp-sharded": ["--config", str(CONFIGS / "strategies" / "fsdp.yaml")],
}


@pytest.fixture(scope="module")
def runs(base, tmp_path_factory):
    root = tmp_path_factory.mktemp("finetune-strategies")
    lines = INSTRUCTIONS.read_text().splitlines()
    (root / "train.jsonl").write_text("\n".join(lines[:16]) + "\n")
    (root / "val.jsonl").write_text("\n".join(lines[16:24]) + "\n")
    common = ["fit", "--config", str(CONFIGS / "finetune" / "lora.yaml"), "--model.init_args.init_from",
              str(base.checkpoint), "--data.init_args.paths", "null",
              "--data.init_args.train_paths", f"[{root / 'train.jsonl'}]",
              "--data.init_args.val_paths", f"[{root / 'val.jsonl'}]", "--data.init_args.batch_size", "4",
              "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.max_steps", "2",
              "--trainer.val_check_interval", "2", "--trainer.num_sanity_val_steps", "0",
              "--trainer.log_every_n_steps", "1", "--trainer.enable_progress_bar", "false",
              "--model.init_args.optim.lr", "1e-2", "--model.init_args.optim.warmup_steps", "1"]
    procs = {}
    try:
        for name, extra in RUNS.items():
            (root / name).mkdir()
            env = {"MASTER_PORT": str(free_port()), "PYTHONPATH": os.pathsep.join(
                filter(None, [str(REPO / "tests"), os.environ.get("PYTHONPATH")]))}
            procs[name] = launch([*common, *extra], root / name, env=env, wait=False)
        for name, proc in procs.items():
            out, _ = proc.communicate(timeout=400)
            assert proc.returncode == 0, f"{name}: exit {proc.returncode}\n{out[-6000:]}"
        yield {name: root / name / "runs" / "llm" / "version_0" for name in RUNS}
    finally:
        for proc in procs.values():
            reap(proc)


@pytest.mark.parametrize("name", ["ddp", "fsdp"])
def test_lora_trains_on_two_processes_and_saves_only_its_tensors(runs, base, name):
    run = runs[name]
    losses = dict(metric_rows(run, "train/loss"))
    assert sorted(losses) == [0, 1] and all(v == v and v < 10 for v in losses.values()), losses
    assert dict(metric_rows(run, "params/trainable")) == {0: 8192.0}  # r=8 on q, v; counted before FSDP shards
    last = run / "checkpoints" / "last.ckpt"
    assert last.is_file(), "one checkpoint file"
    saved = torch.load(last, map_location="cpu", weights_only=True)
    keys = set(saved["state_dict"])
    assert keys and all(".lora_" in k for k in keys) and len(keys) == 8, sorted(keys)
    assert saved["finetune"]["adapter_only"] and saved["global_step"] == 2
    assert any(v.abs().max() > 0 for k, v in saved["state_dict"].items() if "lora_b" in k), "LoRA trained"
    tuned = load_checkpoint(last)
    base_state = torch.load(base.checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    state = tuned.state_dict()
    assert all(torch.equal(state[k], v) for k, v in base_state.items() if k.startswith("model."))


def test_a_sharded_fsdp_checkpoint_keeps_every_tensor(runs):
    folder = runs["fsdp-sharded"] / "checkpoints" / "last.ckpt"
    assert folder.is_dir() and len(list(folder.glob("*.distcp"))) == 2
    meta = torch.load(folder / "meta.pt", map_location="cpu", weights_only=True)
    assert meta["finetune"]["adapter_only"] is False and meta["finetune"]["peft"]["name"] == "lora"
    assert meta["hyper_parameters"]["init_from"] is None, "a complete checkpoint needs no base to load"
