"""No checkpoint runs code: a planted pickle whose ``__reduce__`` creates a marker file is refused
everywhere a checkpoint is read, in one line (exit 2, no traceback), and the marker never appears.
Torch's advice to re-run with ``weights_only=False`` never reaches the user."""

from __future__ import annotations

import pickle
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from llm_modules import CausalLM, ModelConfig, to_hf
from llm_modules.registry import ConfigError
from llm_modules.training.checkpoint_io import AtomicCheckpointIO

from _checkpoint_faults import MARKER, Planted, plant, refused
from _fit_helpers import CONFIGS, tiny

HOLDS_CODE = "holds Python objects"


@pytest.fixture
def here(tmp_path, monkeypatch):
    """The current folder, where the marker would appear; checked to stay empty of it."""
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    assert not (tmp_path / MARKER).exists(), "code in a planted checkpoint ran"


def no_advice(message: str) -> None:
    assert "weights_only" not in message and "trusted source" not in message, message


def fit_args(corpus, cache, *extra: str) -> list[str]:
    return ["fit", *tiny(CONFIGS / "quickstart.yaml", corpus, cache, *extra, steps=2)]


def test_commands_reading_a_checkpoint_refuse_a_planted_pickle(here, capsys, corpus, cache):
    evil = str(plant(here / "evil.ckpt"))
    for args in (
        ["generate", evil, "--prompt-ids", "1,2"],
        ["convert", "to-hf", evil, str(here / "hf")],
        ["export", evil, str(here / "exported")],
        ["quantize", evil, str(here / "q.ckpt"), "--method", "int8-weight"],
        ["validate", "--ckpt_path", evil, "--data.paths", f"[{corpus}]"],
        [*fit_args(corpus, cache), "--ckpt_path", evil],  # resume
        [*fit_args(corpus, cache, "--model.init_args.init_from", evil)],  # fine-tune from a base
    ):
        refused(args, capsys, evil, HOLDS_CODE)
        assert not (here / MARKER).exists(), args[0]


def test_a_bare_pickle_not_a_torch_archive_is_refused_for_what_it_holds(here, capsys, corpus):
    """A plain ``pickle.dumps`` file (torch's legacy format, which memory-mapping cannot read) is judged
    on its content too, not refused for the format with a message about mmap."""
    evil = here / "bare.ckpt"
    evil.write_bytes(pickle.dumps({"state_dict": Planted()}))
    for args in (["validate", "--ckpt_path", str(evil), "--data.paths", f"[{corpus}]"],
                 ["generate", str(evil), "--prompt-ids", "1,2"]):
        line = refused(args, capsys, str(evil), HOLDS_CODE)
        assert "mmap" not in line, line


def test_resume_last_refuses_a_folder_of_planted_pickles(here, capsys, corpus, cache):
    folder = here / "runs" / "llm" / "version_0" / "checkpoints"
    plant(folder / "last.ckpt")
    plant(folder / "step9-val1.000.ckpt")  # the fallback candidates are read safely too
    refused([*fit_args(corpus, cache), "--ckpt_path", "last"], capsys, "last.ckpt", HOLDS_CODE,
            "no other checkpoint")


def test_rollback_never_unpickles_a_planted_file(here):
    from llm_modules.training.rollback import _newest_good_checkpoint

    plant(here / "planted.ckpt")
    callback = SimpleNamespace(last_model_path="", best_model_path="", best_k_models={}, dirpath=str(here),
                               FILE_EXTENSION=".ckpt")
    assert _newest_good_checkpoint(SimpleNamespace(checkpoint_callbacks=[callback]),
                                   SimpleNamespace(streak_start=1000, run_id=None)) is None


def test_library_readers_refuse_a_planted_pickle(here):
    from llm_modules.checkpoint import load_checkpoint

    evil = plant(here / "evil.ckpt")
    raw = here / "raw.ckpt"  # a bare pickle, not torch's zip format
    raw.write_bytes(pickle.dumps({"state_dict": {}, "hook": Planted()}))
    for path in (evil, raw):
        with pytest.raises(ConfigError, match=HOLDS_CODE) as err:
            load_checkpoint(path)
        no_advice(str(err.value))
    # Lightning's resume path, even when asked to unpickle
    with pytest.raises(ConfigError, match=HOLDS_CODE) as err:
        AtomicCheckpointIO().load_checkpoint(evil, weights_only=False)
    no_advice(str(err.value))


def test_peft_adapter_readers_refuse_a_planted_pickle(here):
    from llm_modules.peft import load_adapter, read_adapter

    evil = plant(here / "adapter" / "adapter.safetensors")
    with pytest.raises(ConfigError, match="safetensors") as err:
        read_adapter(evil.parent)
    no_advice(str(err.value))
    module = CausalLM(ModelConfig(vocab_size=64, d_model=32, n_layers=1, n_heads=4))
    with pytest.raises(ConfigError):
        load_adapter(evil, module.model)


@pytest.fixture
def hf_with_planted_bin(here):
    """A Hugging Face folder whose weights are a pytorch_model.bin that runs code when unpickled."""
    folder = here / "hf"
    to_hf(CausalLM(ModelConfig(vocab_size=64, d_model=32, n_layers=1, n_heads=4, max_seq_len=32)), folder)
    (folder / "model.safetensors").unlink()
    torch.save({"transformer.wte.weight": torch.zeros(2), "hook": Planted()}, folder / "pytorch_model.bin")
    return folder


def test_hf_folders_with_a_planted_pytorch_model_bin_are_refused(hf_with_planted_bin, capsys):
    from llm_modules import from_hf

    folder = hf_with_planted_bin
    with pytest.raises(ConfigError, match=HOLDS_CODE) as err:
        from_hf(folder)
    assert "pytorch_model.bin" in str(err.value)
    no_advice(str(err.value))
    refused(["convert", "from-hf", str(folder), str(folder.parent / "out.ckpt")], capsys, "pytorch_model.bin",
            HOLDS_CODE)
    refused(["generate", str(folder), "--prompt-ids", "1,2"], capsys, "pytorch_model.bin", HOLDS_CODE)
    assert not Path(folder.parent / "out.ckpt").exists()
