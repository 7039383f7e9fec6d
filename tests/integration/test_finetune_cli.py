"""Fine-tuning from the command line: the shipped configs/finetune YAMLs, adapter-only checkpoints through
resume, validate and generate, ``llm-modules export`` (checked against transformers), and a Hugging Face
folder as the base.

Runs are in-process (``llm_modules.cli.main``) on the session's small trained base
(``_finetune_helpers.base``), each a few steps long.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from llm_modules import CausalLM
from llm_modules.checkpoint import load_checkpoint
from llm_modules.cli import main
from llm_modules.peft import load_adapter

from _finetune_helpers import INSTRUCTIONS, base, make_base  # noqa: F401  (base: the fixture)
from _fit_helpers import CONFIGS, val_losses

FINETUNE = sorted((CONFIGS / "finetune").glob("*.yaml"))
LORA = CONFIGS / "finetune" / "lora.yaml"
NO_DROPOUT_LORA = "{name: lora, r: 4, alpha: 16, dropout: 0.0}"  # resumed runs are compared step by step


def args(config: Path, base_ckpt, *extra: str, steps: int = 4) -> list[str]:
    """A shipped fine-tuning YAML on the test base and the tiny instruction set, a few steps long."""
    return ["--config", str(config), "--model.init_args.init_from", str(base_ckpt),
            "--data.init_args.paths", f"[{INSTRUCTIONS}]", "--trainer.max_steps", str(steps),
            "--trainer.val_check_interval", str(steps), "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false", "--trainer.log_every_n_steps", "1", *extra]


def split_files(folder: Path, train: int = 16, val: int = 8) -> list[str]:
    """Train on exactly one batch (every step is a whole epoch, so a resumed run starts where the
    uninterrupted one is), validate on a few other records."""
    lines = INSTRUCTIONS.read_text().splitlines()
    (folder / "train.jsonl").write_text("\n".join(lines[:train]) + "\n")
    (folder / "val.jsonl").write_text("\n".join(lines[train : train + val]) + "\n")
    return ["--data.init_args.paths", "null", "--data.init_args.train_paths", f"[{folder / 'train.jsonl'}]",
            "--data.init_args.val_paths", f"[{folder / 'val.jsonl'}]"]


def run_dir(root: Path, version: int = 0) -> Path:
    return root / "runs" / "llm" / f"version_{version}"


def test_every_finetune_yaml_parses_and_builds_its_model(base, tmp_path, monkeypatch, capsys):
    """--print_config through the real CLI, then the model each file describes is built on the base
    (qlora is refused on a machine without CUDA, with the way out)."""
    from lightning import LightningDataModule

    from llm_modules.cli.train import LLMCLI, trainer_defaults
    from llm_modules.models import LanguageModel

    assert {p.stem for p in FINETUNE} == {"full", "lora", "qlora", "adapter", "prefix", "prompt", "ptuning"}
    monkeypatch.chdir(tmp_path)
    for config in FINETUNE:
        assert main(["fit", *args(config, base.checkpoint), "--print_config"]) == 0, config.name
        printed = yaml.safe_load(capsys.readouterr().out)["model"]["init_args"]
        assert (printed["peft"] or {"name": "full"})["name"] == config.stem
        assert printed["config"] is None, "the config comes from init_from"
        if config.stem == "qlora" and not torch.cuda.is_available():
            assert main(["fit", *args(config, base.checkpoint)]) == 2
            assert "model.peft: qlora needs a CUDA GPU" in capsys.readouterr().err
            continue
        cli = LLMCLI(LanguageModel, LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                     args=args(config, base.checkpoint, "--trainer.accelerator", "cpu"), run=False,
                     trainer_defaults=trainer_defaults(), auto_configure_optimizers=False)
        method = cli.model.peft_method
        assert (method.name if method else "full") == config.stem and cli.model.config == base.config


def test_lora_resumes_exactly_from_an_adapter_only_checkpoint(base, tmp_path, monkeypatch):
    """Three runs of the same schedule (optim.max_steps 6): straight through 6 steps; stopped at 3; and
    resumed from the stopped run's adapter-only last.ckpt to 6. The resumed steps follow the
    uninterrupted run (the batch's rows come in another order, so sums differ in the last bits)."""
    monkeypatch.chdir(tmp_path)
    common = [*split_files(tmp_path), "--model.init_args.peft", NO_DROPOUT_LORA,
              "--model.init_args.optim.max_steps", "6", "--model.init_args.optim.warmup_steps", "1",
              "--model.init_args.optim.lr", "3e-3", "--trainer.val_check_interval", "1.0",
              "--trainer.check_val_every_n_epoch", "1"]
    assert main(["fit", *args(LORA, base.checkpoint, *common, steps=6)]) == 0
    assert main(["fit", *args(LORA, base.checkpoint, *common, steps=3)]) == 0
    stopped = run_dir(tmp_path, 1) / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(stopped, map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == 3 and checkpoint["finetune"]["adapter_only"]
    assert main(["fit", *args(LORA, base.checkpoint, *common, "--ckpt_path", str(stopped), steps=6)]) == 0

    # Keyed by epoch (= step here): the resumed run's CSV rows carry Lightning's logging step, which
    # after a checkpoint taken at an epoch's end runs one ahead of global_step.
    whole, resumed = losses_by_epoch(run_dir(tmp_path, 0)), losses_by_epoch(run_dir(tmp_path, 2))
    assert sorted(resumed) == [3, 4, 5] and sorted(whole) == list(range(6))
    assert max(abs(resumed[s] - whole[s]) for s in resumed) < 1e-5, (whole, resumed)
    assert whole[5] < whole[0]
    a, b = (torch.load(run_dir(tmp_path, v) / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
            for v in (0, 2))
    assert a["global_step"] == b["global_step"] == 6 and a["state_dict"].keys() == b["state_dict"].keys()
    assert all((a["state_dict"][k] - b["state_dict"][k]).abs().max() < 1e-5 for k in a["state_dict"])
    steps = [s["step"] for s in b["optimizer_states"][0]["state"].values()]
    assert len(steps) == len(b["state_dict"]) and all(int(s) == 6 for s in steps), "Adam state: LoRA tensors only"


def losses_by_epoch(run: Path) -> dict[int, float]:
    with open(run / "metrics.csv") as f:
        return {int(r["epoch"]): float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")}


@pytest.fixture(scope="module")
def lora_run(base, tmp_path_factory):
    """A LoRA fine-tune through lora.yaml: its folder, holding runs/llm/version_0."""
    root = tmp_path_factory.mktemp("lora-run")
    extra = ["--model.init_args.optim.lr", "1e-2", "--model.init_args.optim.warmup_steps", "1",
             "--model.init_args.peft", "{name: lora, r: 4, targets: ['*.q', '*.v', '*.ffn.*']}"]
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        assert main(["fit", *args(LORA, base.checkpoint, *extra, steps=8)]) == 0
    return root


def test_validate_and_generate_read_an_adapter_only_checkpoint(lora_run, base, tmp_path, monkeypatch, capsys):
    """The base is rebuilt from the checkpoint's init_from, or from --model.init_from when given (a base
    that has moved); a base with other weights is refused."""
    monkeypatch.chdir(lora_run)
    ckpt = run_dir(lora_run) / "checkpoints" / "last.ckpt"
    trained = val_losses(run_dir(lora_run))[-1][1]
    validate = ["validate", "--ckpt_path", str(ckpt), "--data", "llm_modules.data.InstructionDataModule",
                "--data.paths", f"[{INSTRUCTIONS}]", "--data.template", "plain"]
    assert main(validate) == 0  # data named only to evaluate: every record
    assert main([*validate, "--data.val_fraction", "0.1"]) == 0  # the training run's held-out records
    evaluated = lora_run / "runs" / "llm" / "eval"  # evaluation logs apart from training runs
    every, held_out = (val_losses(evaluated / f"version_{v}")[-1][1] for v in (0, 1))
    assert held_out == pytest.approx(trained, abs=1e-5) and every != pytest.approx(trained, abs=1e-5)
    moved = tmp_path / "moved.ckpt"
    shutil.copy(base.checkpoint, moved)
    assert main([*validate, "--model.init_from", str(moved)]) == 0
    other = make_base(tmp_path / "other", steps=1, seed=1)
    capsys.readouterr()
    assert main([*validate, "--model.init_from", str(other.checkpoint)]) == 2
    assert "was trained on other base weights" in capsys.readouterr().err
    capsys.readouterr()
    assert main(["generate", str(ckpt), "--prompt", "Repeat the word cat three times.\n", "--max-new-tokens", "6",
                 "--no-stream"]) == 0
    assert capsys.readouterr().out.startswith("Repeat the word cat three times.\n")


def test_export_merges_lora_into_a_hugging_face_folder_with_the_same_logits(lora_run, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    ckpt = run_dir(lora_run) / "checkpoints" / "last.ckpt"
    tuned = load_checkpoint(ckpt)
    ids = torch.randint(4, 384, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = tuned(ids)
        before = CausalLM(init_from=tuned.init_from).eval()(ids)
    assert (expected - before).abs().max() > 1e-2, "the fine-tune changed the model"

    assert main(["export", str(ckpt), str(tmp_path / "hf")]) == 0
    assert "peft lora merged" in capsys.readouterr().out
    assert (tmp_path / "hf" / "tokenizer.model").read_bytes() == tuned.tokenizer_bytes
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        theirs = hf(ids).logits
    assert (theirs - expected).abs().max() <= 1e-4

    assert main(["export", str(ckpt), str(tmp_path / "merged.ckpt"), "--format", "ckpt", "--merge"]) == 0
    merged = load_checkpoint(tmp_path / "merged.ckpt")
    assert merged.peft_method is None and merged.init_from is None
    assert (merged(ids) - expected).abs().max() <= 1e-5
    again = CausalLM(init_from=str(tmp_path / "merged.ckpt"), peft="lora")  # the merged model as the next base
    assert (again.eval()(ids) - expected).abs().max() <= 1e-5

    assert main(["convert", "to-hf", str(ckpt), str(tmp_path / "converted")]) == 0  # merges as well
    assert (tmp_path / "converted" / "model.safetensors").read_bytes() == (tmp_path / "hf" / "model.safetensors").read_bytes()

    assert main(["export", str(ckpt), str(tmp_path / "lora.safetensors"), "--format", "adapter"]) == 0
    fresh = CausalLM(init_from=tuned.init_from)
    load_adapter(tmp_path / "lora.safetensors", fresh.model)
    assert torch.equal(fresh.eval()(ids), expected)


def test_quantize_merges_lora_first_and_the_library_refuses_an_unmerged_method(lora_run, tmp_path, capsys):
    """Quantizing swaps linear layers; a LoRA layer swapped unmerged would lose its update silently."""
    from llm_modules.quantization import quantize
    from llm_modules.registry import ConfigError

    ckpt = run_dir(lora_run) / "checkpoints" / "last.ckpt"
    tuned = load_checkpoint(ckpt)
    with pytest.raises(ConfigError, match="merge it into the weights first"):
        quantize(tuned, "int8-weight")
    ids = torch.randint(4, 384, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = load_checkpoint(ckpt)(ids)
        base = CausalLM(init_from=tuned.init_from).eval()(ids)
    assert main(["quantize", str(ckpt), str(tmp_path / "q.ckpt"), "--method", "int8-weight"]) == 0
    assert "merged peft method 'lora'" in capsys.readouterr().out
    with torch.no_grad():
        got = load_checkpoint(tmp_path / "q.ckpt")(ids)
    # int8 rounding moves logits a little; losing the LoRA update would move them as far as the base is
    assert (got - expected).abs().max() < 0.25 * (base - expected).abs().max()


def test_export_refusals_are_one_line_and_touch_no_file(lora_run, base, tmp_path, capsys):
    ckpt = run_dir(lora_run) / "checkpoints" / "last.ckpt"
    adapter = CausalLM(init_from=str(base.checkpoint), peft="adapter")
    from llm_modules.checkpoint import save_checkpoint

    adapter_ckpt = save_checkpoint(adapter, tmp_path / "adapter.ckpt")
    existing = tmp_path / "out" / "model.safetensors"
    existing.parent.mkdir()
    existing.write_bytes(b"keep me")
    cases = [
        # with --overwrite: a refusal after the output check leaves the (replaceable) output alone too
        (["export", str(adapter_ckpt), str(existing.parent), "--overwrite"], "cannot be merged into the base weights"),
        (["export", str(base.checkpoint), str(existing), "--format", "adapter", "--overwrite"], "has no peft method"),
        (["export", str(ckpt), str(ckpt), "--format", "ckpt"], "is CKPT itself"),
        (["export", str(ckpt), str(existing.parent), "--merge"], "--merge is for --format ckpt"),
        (["export", str(tmp_path / "none.ckpt"), str(existing.parent)], "does not exist"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert existing.read_bytes() == b"keep me" and sorted(p.name for p in existing.parent.iterdir()) == [existing.name]


def test_init_from_a_hugging_face_folder_then_lora(base, tmp_path, monkeypatch):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    hf_config = LlamaConfig(vocab_size=base.config.vocab_size, hidden_size=64, intermediate_size=128,
                            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                            max_position_embeddings=128, tie_word_embeddings=False)
    folder = tmp_path / "tiny-llama"
    LlamaForCausalLM(hf_config).save_pretrained(folder)
    monkeypatch.chdir(tmp_path)
    assert main(["fit", *args(LORA, folder, "--data.init_args.tokenizer", str(base.tokenizer), steps=2)]) == 0
    ckpt = run_dir(tmp_path) / "checkpoints" / "last.ckpt"
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert saved["finetune"]["adapter_only"] and saved["finetune"]["init_from"] == str(folder.resolve())
    assert json.loads(json.dumps(saved["hyper_parameters"]["config"]))["d_model"] == 64
    tuned = load_checkpoint(ckpt)  # rebuilt on the Hugging Face folder
    assert tuned.peft_method.name == "lora" and tuned.config.d_model == 64
