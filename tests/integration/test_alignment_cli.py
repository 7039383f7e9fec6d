"""Alignment from the command line: configs/align/{reward,dpo}.yaml parse and build on the session's
small base, and a few steps of each run through ``llm-modules fit`` (in-process), logging the
step-0 baseline and writing checkpoints that load back."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from _finetune_helpers import base  # noqa: F401  (the fixture)
from _fit_helpers import CONFIGS, metric_rows

from llm_modules import CausalLM
from llm_modules.alignment import DPO, RewardModel
from llm_modules.checkpoint import load_checkpoint
from llm_modules.cli import main

PREFERENCES = Path(__file__).parents[1] / "data" / "preferences" / "tiny.jsonl"
ALIGN = {name: CONFIGS / "align" / f"{name}.yaml" for name in ("reward", "dpo")}


def args(name: str, base_ckpt, *extra: str, steps: int = 3) -> list[str]:
    return ["--config", str(ALIGN[name]), "--model.init_args.init_from", str(base_ckpt),
            "--data.init_args.paths", f"[{PREFERENCES}]", "--trainer.max_steps", str(steps),
            "--trainer.val_check_interval", str(steps), "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false", "--trainer.log_every_n_steps", "1", *extra]


@pytest.mark.parametrize("name, cls", [("reward", RewardModel), ("dpo", DPO)])
def test_align_yaml_parses_and_builds_its_model(base, name, cls, tmp_path, monkeypatch, capsys):
    from lightning import LightningDataModule

    from llm_modules.cli.train import LLMCLI, trainer_defaults
    from llm_modules.models import LanguageModel

    monkeypatch.chdir(tmp_path)
    assert main(["fit", *args(name, base.checkpoint), "--print_config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["class_path"] == f"llm_modules.alignment.{cls.__name__}"
    assert printed["data"]["class_path"] == "llm_modules.data.PreferenceDataModule"
    cli = LLMCLI(LanguageModel, LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                 args=args(name, base.checkpoint, "--trainer.accelerator", "cpu"), run=False,
                 trainer_defaults=trainer_defaults(), auto_configure_optimizers=False)
    assert type(cli.model) is cls and cli.model.config == base.config
    if cls is DPO:  # the shipped DPO trains LoRA, so its reference is the base with LoRA switched off
        assert cli.model.peft_method.name == "lora" and cli.model.reference_model is None


def test_reward_fit_logs_the_baseline_and_writes_a_loadable_checkpoint(base, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["fit", *args("reward", base.checkpoint, "--model.init_args.optim.warmup_steps", "0")]) == 0
    run = tmp_path / "runs" / "llm" / "version_0"
    accuracy = metric_rows(run, "val/accuracy")
    assert len(accuracy) == 2 and accuracy[0][0] == 0  # the sanity pass is the step-0 baseline, then step 3
    assert metric_rows(run, "train/loss") and metric_rows(run, "train/reward_margin")
    model = load_checkpoint(run / "checkpoints" / "last.ckpt")
    assert isinstance(model, RewardModel)
    assert model.score(torch.tensor([[5, 6, 7]])).shape == (1,)
    assert main(validate(run)) == 0  # every record of the file, scored by the checkpoint
    assert metric_rows(tmp_path / "runs" / "llm" / "eval" / "version_0", "val/accuracy")


def validate(run: Path) -> list[str]:
    """``validate --ckpt_path`` with the data named on the command line alone."""
    return ["validate", "--ckpt_path", str(run / "checkpoints" / "last.ckpt"), "--data",
            "llm_modules.data.PreferenceDataModule", "--data.paths", f"[{PREFERENCES}]",
            "--trainer.enable_progress_bar", "false"]


def test_dpo_fit_writes_a_policy_checkpoint(base, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["fit", *args("dpo", base.checkpoint, "--model.init_args.precompute_reference", "true")]) == 0
    run = tmp_path / "runs" / "llm" / "version_0"
    accuracy = metric_rows(run, "val/rewards/accuracy")
    assert len(accuracy) == 2 and accuracy[0] == (0, 0.0)  # at step 0 the policy is its reference
    assert metric_rows(run, "train/logps/chosen")
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert checkpoint["finetune"]["adapter_only"] and all(".lora_" in k for k in checkpoint["state_dict"])
    assert type(load_checkpoint(run / "checkpoints" / "last.ckpt")) is CausalLM
    assert main(validate(run)) == 0  # back to DPO (the class path), its base rebuilt from init_from
    assert metric_rows(tmp_path / "runs" / "llm" / "eval" / "version_0", "val/rewards/accuracy")
