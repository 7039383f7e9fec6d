"""Checkpoints carry a checksum of their tensor data and every reader verifies it.

A byte flipped in a tensor's data inside a real Trainer checkpoint still loads with ``torch.load``
(the zip's CRCs are not checked); every command that reads the file refuses it in one line naming
it. ``--ckpt_path last`` with a damaged last.ckpt resumes from the newest intact checkpoint beside it.
Stale-temp cleanup leaves the temp files of a writer that is still at work alone."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from llm_modules import CausalLM, ModelConfig
from llm_modules.checkpoint import load_checkpoint, save_checkpoint
from llm_modules.cli import main
from llm_modules.registry import ConfigError
from llm_modules import integrity
from llm_modules.atomic_files import temp_prefix
from llm_modules.training.checkpoint_io import AtomicCheckpointIO, atomic_torch_save

from _checkpoint_faults import flip_tensor_byte, refused
from _fit_helpers import CONFIGS, tiny

CORRUPT = "is corrupt: tensor data does not match its checksum"


def fit_args(corpus: Path, cache: Path, steps: int) -> list[str]:
    """Validation (and a step*.ckpt) every 2 steps, last.ckpt beside them."""
    return ["fit", *tiny(CONFIGS / "quickstart.yaml", corpus, cache, "--trainer.val_check_interval", "2",
                         "--trainer.num_sanity_val_steps", "0", steps=steps)]


@pytest.fixture(scope="module")
def trained(corpus, cache, tmp_path_factory):
    """A real 4-step fit's run folder: last.ckpt, step2-*.ckpt and step4-*.ckpt."""
    root = tmp_path_factory.mktemp("trained")
    here = os.getcwd()
    os.chdir(root)
    try:
        assert main(fit_args(corpus, cache, 4)) == 0
    finally:
        os.chdir(here)
    return root / "runs" / "llm" / "version_0" / "checkpoints"


@pytest.fixture
def run_copy(trained, tmp_path, monkeypatch):
    """A fresh copy of the trained run to damage, as the current folder's runs/llm/version_0."""
    monkeypatch.chdir(tmp_path)
    shutil.copytree(trained.parent.parent, tmp_path / "runs" / "llm")
    return tmp_path / "runs" / "llm" / "version_0" / "checkpoints"


def steps_of(folder: Path) -> dict[int, Path]:
    return {torch.load(p, weights_only=True, mmap=True)["global_step"]: p for p in folder.glob("step*.ckpt")}


def test_every_checkpoint_written_carries_a_checksum_of_its_tensors(trained, tmp_path):
    last = torch.load(trained / "last.ckpt", weights_only=True)
    record = last[integrity.KEY]
    assert record["algorithm"] == "sha256" and record == integrity.digest(last)
    assert record["tensors"] > 20  # weights, optimizer moments, random states
    module = CausalLM(ModelConfig(vocab_size=64, d_model=32, n_layers=1, n_heads=4))
    saved = torch.load(save_checkpoint(module, tmp_path / "m.ckpt"), weights_only=True)
    assert saved[integrity.KEY] == integrity.digest(saved)
    # the digest covers key path, dtype, shape and bytes: each change is seen
    base = integrity.digest({"a": torch.ones(4)})["digest"]
    for other in ({"b": torch.ones(4)}, {"a": torch.ones(4, dtype=torch.float64)}, {"a": torch.ones(2, 2)},
                  {"a": torch.tensor([1.0, 1.0, 1.0, 2.0])}):
        assert integrity.digest(other)["digest"] != base
    big = torch.zeros(3 * integrity.CHUNK // 4 + 5)  # several chunks, hashed in parallel
    first = integrity.digest({"a": big})
    assert integrity.digest({"a": big.clone()}) == first
    big[-1] = 1.0  # a change in the last chunk
    assert integrity.digest({"a": big})["digest"] != first["digest"]


def test_a_file_without_a_checksum_loads_unverified(tmp_path):
    module = CausalLM(ModelConfig(vocab_size=64, d_model=32, n_layers=1, n_heads=4))
    checkpoint = torch.load(save_checkpoint(module, tmp_path / "m.ckpt"), weights_only=True)
    del checkpoint[integrity.KEY]
    torch.save(checkpoint, tmp_path / "old.ckpt")  # as written before integrity records existed
    assert not integrity.verify(checkpoint, tmp_path / "old.ckpt")
    load_checkpoint(tmp_path / "old.ckpt")


def test_a_flipped_tensor_byte_is_refused_by_every_reader(run_copy, capsys, tmp_path, corpus, cache):
    last = run_copy / "last.ckpt"
    flip_tensor_byte(last)
    torch.load(last, weights_only=True)  # the damage is silent to torch
    name = str(last)
    refused(["generate", name, "--prompt-ids", "1,2", "--max-new-tokens", "2"], capsys, CORRUPT, name)
    refused(["convert", "to-hf", name, str(tmp_path / "hf")], capsys, CORRUPT, name)
    refused(["export", name, str(tmp_path / "exported")], capsys, CORRUPT, name)
    refused(["quantize", name, str(tmp_path / "q.ckpt"), "--method", "int8-weight"], capsys, CORRUPT, name)
    refused(["validate", "--ckpt_path", name, "--data.paths", f"[{corpus}]"], capsys, CORRUPT, name)
    # resume of an explicit file: Lightning's reader is our AtomicCheckpointIO
    refused([*fit_args(corpus, cache, 6), "--ckpt_path", name], capsys, CORRUPT, name)
    with pytest.raises(integrity.CheckpointCorrupt, match=CORRUPT):
        load_checkpoint(last)
    with pytest.raises(integrity.CheckpointCorrupt, match=CORRUPT):
        AtomicCheckpointIO().load_checkpoint(last)


def test_a_quantized_checkpoint_is_stamped_and_verified(trained, tmp_path, capsys):
    out = tmp_path / "q.ckpt"
    assert main(["quantize", str(trained / "last.ckpt"), str(out), "--method", "int8-weight"]) == 0
    assert integrity.verify(torch.load(out, weights_only=True), out)
    flip_tensor_byte(out)
    refused(["generate", str(out), "--prompt-ids", "1,2", "--max-new-tokens", "2"], capsys, CORRUPT, str(out))


def test_resume_last_skips_a_corrupt_last_ckpt_for_the_newest_intact_one(run_copy, capsys, corpus, cache):
    flip_tensor_byte(run_copy / "last.ckpt")
    newest = steps_of(run_copy)[4]
    capsys.readouterr()
    assert main([*fit_args(corpus, cache, 6), "--ckpt_path", "last"]) == 0
    err = capsys.readouterr().err
    assert f"last.ckpt is corrupt (tensor data does not match its checksum); resuming from {newest.name}" in err
    resumed = torch.load(run_copy / "last.ckpt", weights_only=True)
    assert resumed["global_step"] == 6 and integrity.verify(resumed, "last.ckpt")


def test_resume_last_refuses_when_no_checkpoint_verifies(run_copy, capsys, corpus, cache):
    for path in run_copy.glob("*.ckpt"):
        flip_tensor_byte(path)
    refused([*fit_args(corpus, cache, 6), "--ckpt_path", "last"], capsys, "last.ckpt is corrupt",
            "no other checkpoint", "verifies")


def test_a_truncated_checkpoint_is_one_line(run_copy, capsys, corpus, cache):
    last = run_copy / "last.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    refused([*fit_args(corpus, cache, 6), "--ckpt_path", str(last)], capsys, str(last), "truncated or damaged")
    refused(["generate", str(last), "--prompt-ids", "1"], capsys, str(last), "truncated or damaged")
    last.write_bytes(last.read_bytes()[:100])  # not even a zip directory: torch says "Invalid argument"
    refused(["generate", str(last), "--prompt-ids", "1"], capsys, str(last), "truncated or damaged")


def test_rollback_passes_over_a_corrupt_checkpoint_for_the_next_older(tmp_path):
    from llm_modules.training.rollback import _newest_good_checkpoint
    from llm_modules.training.stability import STATE_KEY

    for step in (2, 4, 6):
        atomic_torch_save({"global_step": step, "state_dict": {"w": torch.full((64,), float(step))},
                           STATE_KEY: {"run_id": "run"}}, tmp_path / f"step{step}.ckpt")
    callback = SimpleNamespace(last_model_path="", best_model_path="", best_k_models={}, dirpath=str(tmp_path),
                               FILE_EXTENSION=".ckpt")
    trainer = SimpleNamespace(checkpoint_callbacks=[callback])
    guard = SimpleNamespace(streak_start=5, run_id="run")
    assert _newest_good_checkpoint(trainer, guard) == str(tmp_path / "step4.ckpt")
    flip_tensor_byte(tmp_path / "step4.ckpt")
    assert _newest_good_checkpoint(trainer, guard) == str(tmp_path / "step2.ckpt")


def test_an_adapter_file_with_a_flipped_byte_is_refused(tmp_path):
    from llm_modules.peft import apply_peft, read_adapter, save_adapter

    module = CausalLM(ModelConfig(vocab_size=64, d_model=32, n_layers=1, n_heads=4))
    method = apply_peft(module.model, "lora")
    path = save_adapter(tmp_path / "a.safetensors", module.model, method, module.config)
    read_adapter(path)
    header_end = 8 + int.from_bytes(path.read_bytes()[:8], "little")
    data = bytearray(path.read_bytes())
    data[header_end + (len(data) - header_end) // 2] ^= 0x5A
    path.write_bytes(bytes(data))
    with pytest.raises(ConfigError, match=f"{CORRUPT}.*") as err:
        read_adapter(path)
    assert str(path) in str(err.value)


def _writer_holding(temp: Path) -> subprocess.Popen:
    """A process that holds the lock of ``temp`` (as a save in progress does) until killed."""
    code = ("import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
            "fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(120)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(temp)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_stale_temp_cleanup_spares_a_save_in_progress_and_removes_a_dead_writers(tmp_path):
    from llm_modules.atomic_files import _host

    target = tmp_path / "last.ckpt"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    stale = tmp_path / f"{temp_prefix(target)}{_host()}-{dead_pid}-00ff.tmp"
    stale.write_bytes(b"partial")
    other_host = tmp_path / f"{temp_prefix(target)}elsewhere-{dead_pid}-00ff.tmp"
    other_host.write_bytes(b"partial")
    proc = None
    try:
        # another run writing the same target right now: its pid is alive and it holds the lock
        placeholder = tmp_path / "placeholder"
        proc = _writer_holding(placeholder)
        live = tmp_path / f"{temp_prefix(target)}{_host()}-{proc.pid}-00ff.tmp"
        placeholder.rename(live)
        atomic_torch_save({"global_step": 1, "w": torch.ones(3)}, target)
        names = sorted(p.name for p in tmp_path.iterdir())
        assert live.name in names, "the temp of a save in progress was deleted"
        assert other_host.name in names, "a temp of another host's writer cannot be judged; left alone"
        assert stale.name not in names, "a dead writer's temp is removed"
        assert torch.load(target, weights_only=True)["global_step"] == 1
    finally:
        if proc is not None:
            proc.kill()
            proc.wait(30)
    # the writer is gone now: the next save removes its temp
    atomic_torch_save({"global_step": 2, "w": torch.ones(3)}, target)
    assert not live.exists()


def test_a_save_holds_its_temp_files_lock_until_the_rename(tmp_path, monkeypatch):
    """While torch.save writes, the temp file is locked: another process's cleanup cannot take it."""
    seen = {}
    real_save = torch.save

    def spying_save(obj, f, *args, **kwargs):
        temp = next(p for p in tmp_path.iterdir() if p.name.endswith(".tmp"))
        fd = os.open(temp, os.O_RDONLY)
        try:
            with pytest.raises(OSError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
        seen["pid_in_name"] = f"-{os.getpid()}-" in temp.name
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(integrity.torch, "save", spying_save)
    atomic_torch_save({"w": torch.ones(2)}, tmp_path / "last.ckpt")
    assert seen == {"pid_in_name": True}


def test_hashing_keeps_up_with_saving(tmp_path):
    """The digest of 32 MB of tensors takes a fraction of the time torch.save needs for them."""
    checkpoint = {"state_dict": {f"w{i}": torch.randn(1 << 20) for i in range(8)}}
    start = time.perf_counter()
    integrity.digest(checkpoint)
    hashing = time.perf_counter() - start
    start = time.perf_counter()
    torch.save(checkpoint, tmp_path / "x.ckpt")
    os.fsync(os.open(tmp_path / "x.ckpt", os.O_RDONLY))
    saving = time.perf_counter() - start
    assert hashing < max(3 * saving, 0.5), json.dumps({"hash_s": hashing, "save_s": saving})
