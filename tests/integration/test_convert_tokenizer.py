"""``convert to-hf`` writes the checkpoint's tokenizer, as ``export`` does (issue 19, section 6):
transformers' AutoTokenizer loads the folder and encodes as the checkpoint's tokenizer does, the
special token ids are in config.json and generation_config.json, and ``llm-modules generate`` on the
folder continues a prompt exactly as on the checkpoint."""

from __future__ import annotations

import json

import pytest

from _output_helpers import checkpoint_with_tokenizer, tree
from llm_modules import CausalLM
from llm_modules.checkpoint import load_checkpoint, save_checkpoint
from llm_modules.cli import main

TEXTS = ["def add(a, b):\n    return a + b\n", "  x = 12345  # héllo wörld 🎉\t", "<mask> <s> not special </s>"]


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("convert")
    ckpt = checkpoint_with_tokenizer(root / "m.ckpt")
    assert main(["convert", "to-hf", str(ckpt), str(root / "hf")]) == 0
    return ckpt, root / "hf"


def test_auto_tokenizer_loads_the_folder_and_encodes_as_the_checkpoint(converted):
    transformers = pytest.importorskip("transformers")
    ckpt, folder = converted
    ours = load_checkpoint(ckpt).tokenizer
    theirs = transformers.AutoTokenizer.from_pretrained(folder)
    for text in TEXTS:
        assert theirs.encode(text, add_special_tokens=False) == ours.encode(text), text
        assert theirs.decode(ours.encode(text)) == text
    assert (theirs.eos_token_id, theirs.pad_token_id, theirs.unk_token_id) == (ours.eos_id, ours.pad_id, ours.unk_id)
    assert theirs("x").input_ids == ours.encode("x")  # no BOS: the model was trained without one


def test_special_token_ids_are_in_config_and_generation_config(converted):
    transformers = pytest.importorskip("transformers")
    ckpt, folder = converted
    eos = load_checkpoint(ckpt).tokenizer.eos_id
    config = json.loads((folder / "config.json").read_text())
    assert (config["eos_token_id"], config["pad_token_id"]) == (eos, 0)
    generation = transformers.GenerationConfig.from_pretrained(folder)
    assert (generation.eos_token_id, generation.pad_token_id) == (eos, 0)


def test_generate_on_the_folder_continues_as_on_the_checkpoint(converted, capsys):
    ckpt, folder = converted
    outputs = []
    for model in (ckpt, folder):
        assert main(["generate", str(model), "--prompt", "def add(a, b):", "--max-new-tokens", "8", "--no-stream"]) == 0
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1] and outputs[0].startswith("def add(a, b):")


def test_convert_and_export_write_the_same_folder(converted, tmp_path):
    ckpt, folder = converted
    assert main(["export", str(ckpt), str(tmp_path / "exported")]) == 0
    assert tree(tmp_path / "exported") == tree(folder)


def test_a_checkpoint_without_a_tokenizer_gets_no_tokenizer_files(converted, tmp_path):
    ckpt, _ = converted
    module = load_checkpoint(ckpt)
    save_checkpoint(CausalLM(module.config), tmp_path / "bare.ckpt")
    assert main(["convert", "to-hf", str(tmp_path / "bare.ckpt"), str(tmp_path / "hf")]) == 0
    assert sorted(p.name for p in (tmp_path / "hf").iterdir()) == ["config.json", "generation_config.json",
                                                                  "model.safetensors"]
    assert json.loads((tmp_path / "hf" / "config.json").read_text()).get("eos_token_id") is None
