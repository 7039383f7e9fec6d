"""Commands that only read a model start without the training stack.

Importing Lightning (with torchmetrics, scipy and transformers, which it pulls in) costs seconds, most
of what ``generate`` or ``estimate`` take on a small model. ``generate``, ``convert``, ``export``,
``quantize``, ``estimate`` and ``registry`` load models as ``InferenceLM`` (``llm_modules.models.
inference_lm``) and must import none of those. Each command runs in one fresh interpreter, in turn,
and the heavy packages present after each are named: the first command that pulls one in fails.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from llm_modules.checkpoint import load_checkpoint, load_model, save_checkpoint
from llm_modules.models import CausalLM, InferenceLM, MaskedLM, Seq2SeqLM
from tests._core_helpers import tiny_config

HEAVY = ("lightning", "pytorch_lightning", "torchmetrics", "transformers", "scipy")

CHILD = r"""
import json, sys
from llm_modules.cli import main

report = []
for argv in json.loads(sys.argv[1]):
    code = main(argv)
    heavy = sorted({m.split(".")[0] for m in sys.modules} & set(json.loads(sys.argv[2])))
    report.append({"argv": argv, "code": code, "heavy": heavy})
print("REPORT " + json.dumps(report))
"""


def _commands(tmp_path) -> list[list[str]]:
    ckpt = tmp_path / "lm.ckpt"
    torch.manual_seed(0)
    save_checkpoint(CausalLM(tiny_config()), ckpt)
    return [
        ["registry"],
        ["estimate", "--preset", "llama-7b"],
        ["generate", str(ckpt), "--prompt-ids", "5 6 7", "--max-new-tokens", "4"],
        ["export", str(ckpt), str(tmp_path / "hf")],
        ["export", str(ckpt), str(tmp_path / "copy.ckpt"), "--format", "ckpt"],
        ["convert", "from-hf", str(tmp_path / "hf"), str(tmp_path / "back.ckpt")],
        ["convert", "to-hf", str(tmp_path / "back.ckpt"), str(tmp_path / "hf2")],
        ["quantize", str(ckpt), str(tmp_path / "q.ckpt"), "--method", "int8-weight"],
        ["generate", str(tmp_path / "q.ckpt"), "--prompt-ids", "5 6 7", "--max-new-tokens", "4"],
        ["generate", str(tmp_path / "hf"), "--prompt-ids", "5 6 7", "--max-new-tokens", "4"],
    ]


def test_reading_commands_import_no_training_stack(tmp_path):
    commands = _commands(tmp_path)
    done = subprocess.run([sys.executable, "-c", CHILD, json.dumps(commands), json.dumps(HEAVY)],
                          capture_output=True, text=True, timeout=240)
    lines = [line for line in done.stdout.splitlines() if line.startswith("REPORT ")]
    assert lines, f"no report:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    for entry in json.loads(lines[-1][len("REPORT "):]):
        assert entry["code"] == 0, f"{entry['argv']} failed:\n{done.stderr[-3000:]}"
        assert not entry["heavy"], f"llm-modules {' '.join(entry['argv'][:1])} imported {entry['heavy']}"


@pytest.mark.parametrize("cls", [CausalLM, Seq2SeqLM, MaskedLM])
def test_inference_lm_is_the_checkpoints_model(tmp_path, cls):
    """The InferenceLM of a checkpoint computes what the LightningModule computes, and saving it again
    writes the same tensors and the same hyper-parameters (so either class loads the other's files)."""
    torch.manual_seed(0)
    lm = cls(tiny_config()).eval()
    save_checkpoint(lm, tmp_path / "a.ckpt")
    loaded = load_model(tmp_path / "a.ckpt")
    assert isinstance(loaded, InferenceLM) and loaded.kind == cls.__name__
    ids = torch.randint(0, lm.config.vocab_size, (2, 9))
    args = (ids, None, ids[:, :5]) if cls is Seq2SeqLM else (ids,)
    torch.testing.assert_close(loaded(*args), lm(*args), rtol=0, atol=0)
    save_checkpoint(loaded, tmp_path / "b.ckpt")
    a, b = (torch.load(tmp_path / name, weights_only=True) for name in ("a.ckpt", "b.ckpt"))
    assert a["hyper_parameters"] == b["hyper_parameters"]
    assert a.keys() == b.keys()
    for key, tensor in a["state_dict"].items():
        assert torch.equal(tensor, b["state_dict"][key]), key
    again = load_checkpoint(tmp_path / "b.ckpt")
    assert type(again) is cls
    torch.testing.assert_close(again(*args), lm(*args), rtol=0, atol=0)


def test_the_training_cli_still_resolves_every_kind_by_its_short_name():
    """``llm_modules.models`` imports its LightningModules lazily, and LightningCLI resolves ``--model
    NAME`` among the subclasses imported so far: in a fresh interpreter every kind must still be found."""
    code = ("import sys; from llm_modules.cli import main; "
            "sys.exit(max(main(['fit', '--model.help', name]) for name in ('CausalLM', 'PrefixLM', 'Seq2SeqLM', "
            "'MaskedLM')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("usage:") == 4 and "--model.peft_checkpoint" in done.stdout
