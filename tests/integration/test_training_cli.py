"""``llm-modules fit | validate | test | predict`` end to end, from the shipped YAMLs, on a tiny corpus.

Every training YAML under configs/ runs here with tiny overrides (model size, corpus, steps), so
the files users copy are the files that are tested.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from llm_modules.checkpoint import load_checkpoint
from llm_modules.cli import main

from _fit_helpers import CONFIGS, SNIPPETS, tiny, val_losses

TRAINING_YAMLS = sorted(p for p in CONFIGS.glob("*.yaml"))
KIND_OF = {"quickstart": "CausalLM", "prefix-lm": "PrefixLM", "t5-span": "Seq2SeqLM", "bert-mlm": "MaskedLM"}


@pytest.mark.parametrize("config", TRAINING_YAMLS, ids=lambda p: p.stem)
def test_each_kind_trains_from_its_yaml_and_the_loss_falls(config, corpus, cache, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["fit", *tiny(config, corpus, cache)]) == 0
    run = tmp_path / "runs" / "llm" / "version_0"
    losses = val_losses(run)
    assert losses[0][0] == 0, "the step-0 baseline validation is logged"
    assert losses[-1][1] < losses[0][1] - 0.5, losses
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["model_kind"] == KIND_OF[config.stem]
    assert ckpt["hyper_parameters"]["config"]["d_model"] == 32
    assert isinstance(ckpt["tokenizer"], bytes) and len(ckpt["tokenizer"]) > 1000
    assert (run / "config.yaml").is_file() and any(run.glob("events.out.tfevents*"))


def test_every_yaml_under_configs_parses_and_instantiates(corpus, cache, tmp_path, monkeypatch, capsys):
    """--print_config parses and resolves each file; the fit test above instantiates each one."""
    monkeypatch.chdir(tmp_path)
    for config in TRAINING_YAMLS:
        assert main(["fit", *tiny(config, corpus, cache), "--print_config"]) == 0, config
        printed = capsys.readouterr().out
        assert f"class_path: llm_modules.{KIND_OF[config.stem]}" in printed


def test_print_config_round_trips_and_reruns_in_the_same_folder(corpus, cache, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    base = CONFIGS / "quickstart.yaml"
    assert main(["fit", *tiny(base, corpus, cache, "--model.init_args.config.position", "alibi"),
                 "--print_config"]) == 0
    printed = capsys.readouterr().out
    saved = tmp_path / "printed.yaml"
    saved.write_text(printed)
    assert "position: alibi" in printed
    assert main(["fit", "--config", str(saved), "--print_config"]) == 0
    assert capsys.readouterr().out == printed
    steps = ["--trainer.max_steps", "4", "--trainer.val_check_interval", "4"]
    assert main(["fit", "--config", str(saved), *steps]) == 0
    assert main(["fit", "--config", str(saved), *steps]) == 0  # rerun in the same folder
    runs = sorted((tmp_path / "runs" / "llm").iterdir())
    assert [r.name for r in runs] == ["version_0", "version_1"]
    assert all((r / "checkpoints" / "last.ckpt").is_file() for r in runs)


def test_validate_test_predict_from_a_checkpoint(corpus, cache, tmp_path, monkeypatch):
    """Also: on CPU each command keeps freed memory for reuse unless told not to."""
    monkeypatch.chdir(tmp_path)
    retained = []
    monkeypatch.setattr("llm_modules.cli.train.retain_freed_cpu_memory", lambda: retained.append(True) or True)
    config = CONFIGS / "quickstart.yaml"
    assert main(["fit", *tiny(config, corpus, cache, steps=6)]) == 0
    assert retained == [True]
    ckpt = tmp_path / "runs" / "llm" / "version_0" / "checkpoints" / "last.ckpt"
    for command in ("validate", "test", "predict"):
        off = ["--retain_freed_cpu_memory", "false"] if command == "test" else []
        assert main([command, *tiny(config, corpus, cache), "--ckpt_path", str(ckpt), *off]) == 0, command
    assert len(retained) == 3, "fit, validate and predict retain; test was told not to"
    module = load_checkpoint(ckpt)
    assert module.kind == "CausalLM" and module.tokenizer_bytes


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_bad_inputs_end_with_one_clear_line_and_damage_nothing(corpus, cache, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    config = CONFIGS / "quickstart.yaml"
    assert main(["fit", *tiny(config, corpus, cache, steps=4)]) == 0
    runs = tmp_path / "runs"
    before_runs, before_cache = digest(runs), digest(cache)
    capsys.readouterr()

    empty = tmp_path / "empty"
    empty.mkdir()
    empty_file = tmp_path / "empty.py"
    empty_file.write_text("")
    broken = tmp_path / "broken.yaml"
    broken.write_text("model: [unclosed\n")
    big_tok = tmp_path / "big.model"
    from llm_modules.data import Tokenizer

    Tokenizer.train((s * 3 for s in SNIPPETS * 20), big_tok, vocab_size=400, num_sentinels=8)

    cases = {
        "norm": ["--model.init_args.config.norm", "rmsnrom"],
        "data.paths": ["--data.init_args.paths", f"[{tmp_path / 'missing-folder'}]"],
        "data.paths[0]": ["--data.init_args.paths", f"[{empty}]"],
        "data.paths: no text": ["--data.init_args.paths", f"[{empty_file}]", "--data.init_args.cache_dir",
                                str(tmp_path / "other-cache")],
        "vocab_size": ["--data.init_args.tokenizer", str(big_tok), "--data.init_args.train_tokenizer", "false"],
        "model.config.vocab_size": ["--model.init_args.config.vocab_size", "400"],  # tokenizer 320 < model
        "max_seq_len": ["--model.init_args.config.position", "learned", "--model.init_args.config.max_seq_len", "16"],
        "n_heads": ["--model.init_args.config.n_heads", "5", "--model.init_args.config.n_kv_heads", "5"],
    }
    for field, extra in cases.items():
        code = main(["fit", *tiny(config, corpus, cache, *extra, steps=4)])
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.startswith("llm-modules")]
        assert code == 2, (field, err[-2000:])
        assert len(lines) == 1 and field in lines[0], (field, err[-2000:])
        assert "Traceback" not in err, field

    for bad in (["--config", str(broken)], ["--config", str(tmp_path / "nope.yaml")]):
        code = main(["fit", *bad])
        err = capsys.readouterr().err
        assert code == 2 and "Traceback" not in err and "--config" in err, err

    for before, folder in ((before_cache, cache), (before_runs, runs)):
        after = digest(folder)  # failed runs may add files; none that existed may change or vanish
        assert {k: v for k, v in after.items() if k in before} == before


def test_a_preset_can_be_named_on_the_command_line_and_overridden(tmp_path, monkeypatch, capsys):
    import yaml

    from llm_modules.config import preset_dir

    monkeypatch.chdir(tmp_path)
    preset = yaml.safe_load(preset_dir().joinpath("llama-tiny.yaml").read_text())
    args = ["fit", "--config", str(CONFIGS / "quickstart.yaml"), "--model.config", "llama-tiny",
            "--model.config.position", "alibi", "--print_config"]
    assert main(args) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    config = printed["model"]["init_args"]["config"]
    assert config["d_model"] == preset["d_model"] and config["n_layers"] == preset["n_layers"]
    assert config["position"] == "alibi"


def test_fit_plugins_flag_imports_a_local_module_from_the_working_directory(corpus, cache, tmp_path, monkeypatch):
    """``--plugins mod`` finds ./mod.py for training commands, as it does for ``registry``."""
    from llm_modules.registry import NORMS

    monkeypatch.chdir(tmp_path)
    (tmp_path / "halfnorm_plugin.py").write_text(
        "import torch\nfrom torch import nn\nfrom llm_modules.registry import NORMS\n\n"
        "@NORMS.register('halfnorm')\nclass HalfNorm(nn.LayerNorm):\n"
        "    '''LayerNorm whose output is halved (a test component).'''\n"
        "    def __init__(self, dim: int, eps: float = 1e-5):\n        super().__init__(dim, eps=eps)\n\n"
        "    def forward(self, x):\n        return 0.5 * super().forward(x)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))  # pytest's own sys.path may lack the cwd
    try:
        args = tiny(CONFIGS / "quickstart.yaml", corpus, cache, "--model.init_args.config.norm", "halfnorm", steps=2)
        assert main(["fit", *args, "--plugins", "halfnorm_plugin"]) == 0
        assert "halfnorm" in NORMS
    finally:
        NORMS.unregister("halfnorm")
