"""Every Hugging Face family (``tests/family_models``) fine-tunes from the command line as a user
would: ``model.init_from`` the family's folder, LoRA for 20 steps on the tiny instruction set, the
validation loss lower after than before, and ``export`` writes a folder that transformers loads
with the fine-tuned model's logits.
"""

from __future__ import annotations

import pytest
import torch

from llm_modules.checkpoint import load_checkpoint
from llm_modules.cli import main

from _finetune_helpers import INSTRUCTIONS, base  # noqa: F401  (base: the fixture)
from _fit_helpers import CONFIGS, val_losses
from family_models import family_modules
from hf_helpers import load_hf, logits_of

FAMILIES = family_modules()
STEPS = 20


@pytest.mark.parametrize("name", list(FAMILIES))
def test_lora_from_the_family_folder_then_export(name, base, tmp_path, monkeypatch):
    import transformers

    torch.manual_seed(0)
    folder = tmp_path / name
    FAMILIES[name].build(base.config.vocab_size).save_pretrained(folder)  # the base's tokenizer fits its vocabulary
    monkeypatch.chdir(tmp_path)
    argv = ["fit", "--config", str(CONFIGS / "finetune" / "lora.yaml"), "--model.init_args.init_from", str(folder),
            "--data.init_args.paths", f"[{INSTRUCTIONS}]", "--data.init_args.tokenizer", str(base.tokenizer),
            "--model.init_args.peft", "{name: lora, r: 8, alpha: 16, dropout: 0.0, targets: ['*.q', '*.v', '*.o']}",
            "--trainer.max_steps", str(STEPS), "--trainer.val_check_interval", str(STEPS),
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
    assert main(argv) == 0
    run = tmp_path / "runs" / "llm" / "version_0"
    losses = val_losses(run)
    assert len(losses) == 2 and losses[0][0] == 0, losses  # before training, and after the last step
    assert losses[-1][1] < losses[0][1], f"{name}: validation loss did not fall: {losses}"

    ckpt = run / "checkpoints" / "last.ckpt"
    assert main(["export", str(ckpt), str(tmp_path / "exported")]) == 0
    tuned = load_checkpoint(ckpt)
    ids = torch.randint(4, base.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    expected = logits_of(tuned, input_ids=ids)
    theirs = logits_of(load_hf(transformers.AutoModelForCausalLM, tmp_path / "exported"), input_ids=ids)
    assert (theirs - expected).abs().max() <= 1e-4
