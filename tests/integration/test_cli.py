"""The ``llm-modules`` command line: dispatch, ``registry``, ``convert`` and the checkpoint files it uses.

Commands run in-process through ``main(argv)``; one subprocess checks ``python -m llm_modules``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import types

import pytest
import torch

from llm_modules import CausalLM, ModelConfig, PrefixLM
from llm_modules.checkpoint import load_checkpoint, save_checkpoint
from llm_modules.cli import COMMANDS, main
from llm_modules.cli.registry_cmd import catalogue
from llm_modules.registry import REGISTRIES, ConfigError


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(err: str, *fragments: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def tiny(name: str = "gpt2-tiny", **overrides) -> ModelConfig:
    return ModelConfig.from_preset(name, **overrides)


def logits(module, ids):
    module.eval()
    with torch.no_grad():
        return module(ids)


IDS = torch.randint(1, 500, (2, 10), generator=torch.Generator().manual_seed(0))


# ---- dispatch ----------------------------------------------------------------------------------------------


def test_help_lists_every_subcommand(capsys):
    code, out, _ = run_cli(capsys, "--help")
    assert code == 0
    for name in ("fit", "validate", "test", "predict", "generate", "registry", "convert", "export", "quantize"):
        assert f"  {name} " in out
    assert set(COMMANDS) == {"fit", "validate", "test", "predict", "generate", "registry", "convert", "export",
                             "tokenizer", "quantize", "estimate", "data", "evaluate"}


def test_no_command_and_unknown_command_exit_2(capsys):
    code, _, err = run_cli(capsys)
    assert code == 2 and "usage: llm-modules" in err
    code, _, err = run_cli(capsys, "regstry")
    assert code == 2
    assert_one_line_error(err, "unknown command 'regstry'", "did you mean 'registry'")


def test_training_commands_go_to_train_run_with_the_subcommand_first(monkeypatch):
    seen = []
    fake = types.ModuleType("llm_modules.cli.train")
    fake.run = lambda argv: seen.append(argv) or 0
    monkeypatch.setitem(sys.modules, "llm_modules.cli.train", fake)
    assert main(["fit", "--config", "x.yaml"]) == 0
    assert main(["predict"]) == 0
    assert seen == [["fit", "--config", "x.yaml"], ["predict"]]


def test_training_commands_without_train_module_say_so(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "llm_modules.cli.train", None)  # import fails as if absent
    code, _, err = run_cli(capsys, "fit", "--config", "x.yaml")
    assert code == 2
    assert_one_line_error(err, "llm-modules fit: error:", "training commands")


def test_subcommand_help_exits_0(capsys):
    code, out, _ = run_cli(capsys, "convert", "--help")
    assert code == 0 and "from-hf" in out and "to-hf" in out
    code, out, _ = run_cli(capsys, "registry", "--help")
    assert code == 0 and "--format" in out and "--plugins" in out


# ---- registry ----------------------------------------------------------------------------------------------


def test_registry_table_lists_every_slot_and_name(capsys):
    code, out, _ = run_cli(capsys, "registry")
    assert code == 0
    for slot, entries in catalogue().items():
        assert any(line.startswith(slot) for line in out.splitlines())
        for entry in entries:
            row = next(line for line in out.splitlines() if line.split()[:1] == [entry["name"]])
            assert entry["provider"] in row and entry["doc"][:20] in row


def test_registry_json_is_the_catalogue(capsys):
    code, out, _ = run_cli(capsys, "registry", "--format", "json")
    assert code == 0
    listing = json.loads(out)
    assert set(listing) == set(REGISTRIES) >= {"norm", "residual", "activation", "position", "attention", "peft"}
    assert {"lora", "qlora", "adapter"} <= {e["name"] for e in listing["peft"]}
    assert listing == catalogue()
    for entries in listing.values():
        for entry in entries:
            assert set(entry) == {"name", "doc", "provider"}
    assert {"name": "rmsnorm", "provider": "llm_modules"}.items() <= next(
        e for e in listing["norm"] if e["name"] == "rmsnorm").items()


def test_registry_missing_plugin_module_exit_2(capsys):
    code, _, err = run_cli(capsys, "registry", "--plugins", "no_such_plugin_module_xyz")
    assert code == 2
    assert_one_line_error(err, "no_such_plugin_module_xyz")


# ---- checkpoints -------------------------------------------------------------------------------------------


def test_checkpoint_round_trip_is_exact_and_lightning_readable(tmp_path):
    torch.manual_seed(0)
    lm = CausalLM(tiny())
    path = save_checkpoint(lm, tmp_path / "sub" / "model.ckpt")
    assert [p.name for p in path.parent.iterdir()] == ["model.ckpt"]  # no temporary left behind
    raw = torch.load(path, weights_only=True)
    # each fact once: the config is a hyper-parameter (what LightningCLI rebuilds from), not a second copy
    assert raw["model_kind"] == "CausalLM" and raw["hyper_parameters"]["config"] == lm.config.to_dict()
    assert "model_config" not in raw
    assert set(raw["state_dict"]) == set(lm.state_dict())

    again = load_checkpoint(path)
    assert type(again) is CausalLM and again.config == lm.config
    torch.testing.assert_close(logits(again, IDS), logits(lm, IDS), rtol=0, atol=0)
    via_lightning = CausalLM.load_from_checkpoint(path)
    torch.testing.assert_close(logits(via_lightning, IDS), logits(lm, IDS), rtol=0, atol=0)


def test_failed_save_leaves_the_old_file(tmp_path, monkeypatch):
    path = save_checkpoint(CausalLM(tiny()), tmp_path / "model.ckpt")
    before = path.read_bytes()

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        save_checkpoint(CausalLM(tiny()), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.ckpt"]


def test_load_checkpoint_from_a_trainer(tmp_path):
    """A checkpoint written by Lightning's Trainer loads through load_checkpoint (weights_only)."""
    import lightning as L

    torch.manual_seed(0)
    lm = PrefixLM(tiny("glm-tiny"))
    data = [{"input_ids": IDS, "prefix_lengths": torch.tensor([3, 5])}]
    trainer = L.Trainer(
        max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
    )
    trainer.fit(lm, train_dataloaders=torch.utils.data.DataLoader(data, batch_size=None))
    trainer.save_checkpoint(tmp_path / "trainer.ckpt")

    again = load_checkpoint(tmp_path / "trainer.ckpt")
    assert type(again) is PrefixLM and again.config == lm.config
    prefix = torch.tensor([3, 5])
    with torch.no_grad():
        torch.testing.assert_close(again(IDS, prefix_lengths=prefix), lm.eval()(IDS, prefix_lengths=prefix))


def test_load_checkpoint_refuses_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.ckpt")
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="cannot be read"):
        load_checkpoint(tmp_path / "junk.ckpt")
    torch.save({"state_dict": {}, "payload": types.SimpleNamespace(a=1)}, tmp_path / "code.ckpt")
    with pytest.raises(ConfigError, match="cannot be read"):  # would need unpickling arbitrary objects
        load_checkpoint(tmp_path / "code.ckpt")
    torch.save({"state_dict": {}}, tmp_path / "foreign.ckpt")
    with pytest.raises(ConfigError, match="lacks its model config or model_kind"):
        load_checkpoint(tmp_path / "foreign.ckpt")


# ---- convert -----------------------------------------------------------------------------------------------


def test_convert_errors_are_one_line_exit_2(capsys, tmp_path):
    code, _, err = run_cli(capsys, "convert", "to-hf", str(tmp_path / "missing.ckpt"), str(tmp_path / "out"))
    assert code == 2
    assert_one_line_error(err, "llm-modules convert: error:", "missing.ckpt")
    code, _, err = run_cli(capsys, "convert", "from-hf", str(tmp_path / "nope"), str(tmp_path / "x.ckpt"))
    assert code == 2
    assert_one_line_error(err, "nope")
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(capsys, "convert", "from-hf", str(tmp_path / "empty"), str(tmp_path / "x.ckpt"))
    assert code == 2
    assert_one_line_error(err, "config.json")
    assert not (tmp_path / "x.ckpt").exists()


def test_convert_to_hf_refuses_a_model_no_family_represents(capsys, tmp_path):
    ckpt = save_checkpoint(PrefixLM(tiny("glm-tiny")), tmp_path / "glm.ckpt")
    code, _, err = run_cli(capsys, "convert", "to-hf", str(ckpt), str(tmp_path / "out"))
    assert code == 2
    assert_one_line_error(err, "no Hugging Face family")
    assert not (tmp_path / "out").exists()
    code, _, err = run_cli(capsys, "convert", "to-hf", str(ckpt), str(tmp_path / "out"), "--family", "gtp2")
    assert code == 2
    assert_one_line_error(err, "gtp2")


def test_convert_round_trip_through_hugging_face(capsys, tmp_path):
    import transformers

    torch.manual_seed(0)
    hf_config = transformers.GPT2Config(vocab_size=500, n_positions=64, n_embd=32, n_layer=2, n_head=4)
    hf = transformers.GPT2LMHeadModel(hf_config).eval()
    hf.save_pretrained(tmp_path / "hf")
    with torch.no_grad():
        expected = hf(IDS).logits

    ckpt = tmp_path / "gpt2.ckpt"
    code, out, err = run_cli(capsys, "convert", "from-hf", str(tmp_path / "hf"), str(ckpt))
    assert code == 0, err
    assert "CausalLM" in out
    torch.testing.assert_close(logits(load_checkpoint(ckpt), IDS), expected, rtol=0, atol=1e-4)

    code, _, err = run_cli(capsys, "convert", "to-hf", str(ckpt), str(tmp_path / "back"), "--family", "gpt2")
    assert code == 0, err
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "back").eval()
    with torch.no_grad():
        torch.testing.assert_close(back(IDS).logits, expected, rtol=0, atol=1e-4)


# ---- the installed entry points ----------------------------------------------------------------------------


def test_python_dash_m_reaches_main(tmp_path):
    """``python -m llm_modules`` runs the same main, and an error ends the process with exit code 2 and
    one line, no traceback (the console script is exercised in test_plugins). The error is a
    ConfigError that ``registry`` raises without importing torch: a second of process start, where
    ``convert``'s (its message is checked in process above) imports Lightning first, six."""
    bad = subprocess.run([sys.executable, "-m", "llm_modules", "registry", "--plugins", "no_such_plugin_module_xyz"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
    assert_one_line_error(bad.stderr, "llm-modules registry: error:", "no_such_plugin_module_xyz")
    assert bad.stdout == ""


def test_tokenizer_train_writes_a_model_that_loads(tmp_path, capsys):
    from llm_modules.data import Tokenizer

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(5):
        (corpus / f"m{i}.py").write_text(f"def f{i}(x):\n    return x * {i} + 12345\n" * 20)
    out = tmp_path / "tok.model"
    assert main(["tokenizer", "train", str(corpus), "--out", str(out), "--vocab-size", "300",
                 "--num-sentinels", "4"]) == 0
    assert "300 pieces" in capsys.readouterr().out
    tok = Tokenizer.load(out)
    assert tok.vocab_size == 300 and len(tok.sentinel_ids) == 4
    text = "def f3(x):\n    return x * 3 + 12345\n"
    assert tok.decode(tok.encode(text)) == text
    assert main(["tokenizer", "train", str(tmp_path / "missing"), "--out", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err
