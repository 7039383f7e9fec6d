"""Shipped model presets: each parses, the tiny ones run, the published ones have the published size,
and presets load from an installed wheel as well as from a checkout.

Published sizes are counted on the meta device (no memory is allocated), against either the
published figure or transformers' own model class built from the published HF config.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from llm_modules import CausalLM, MaskedLM, ModelConfig, PrefixLM, Seq2SeqLM
from llm_modules.config import preset_dir, preset_names
from llm_modules.nn import count_parameters

ROOT = Path(__file__).resolve().parents[2]

#: which LM kind each preset family is meant for (presets are plain ModelConfig data, with no kind)
KIND = {
    "llama": CausalLM, "gpt2": CausalLM, "bloom": CausalLM, "palm": CausalLM,
    "t5": Seq2SeqLM, "bert": MaskedLM, "glm": PrefixLM,
    "mixtral": CausalLM, "qwen2": CausalLM, "qwen3": CausalLM, "llama3": CausalLM, "smollm2": CausalLM,
    "phi3": CausalLM, "mistral": CausalLM, "qwen2.5": CausalLM,
    "gemma": CausalLM, "pythia": CausalLM, "olmo": CausalLM, "falcon": CausalLM, "opt": CausalLM,
}
TINY = ["llama-tiny", "gpt2-tiny", "bloom-tiny", "t5-v1_1-tiny", "bert-tiny", "glm-tiny", "palm-tiny", "llama3-tiny",
        "smollm2-tiny", "phi3-tiny", "mistral-tiny", "qwen2.5-tiny", "qwen3-tiny"]
TINY += ["gemma-tiny", "gemma-2-tiny", "gemma-3-tiny"]
TINY += ["pythia-tiny", "olmo-2-tiny", "falcon-tiny", "opt-tiny"]
PUBLISHED = ["llama-7b", "gpt2", "bloom-560m", "t5-v1_1-base", "bert-base", "glm-130b", "palm-8b", "llama-3.2-1b",
             "llama-3.1-8b", "smollm2-135m", "phi3-mini-4k", "mistral-7b", "qwen2.5-0.5b", "qwen2.5-7b", "qwen3-0.6b"]


def kind_of(preset: str):
    return KIND[preset.split("-")[0]]


def meta_count(preset: str) -> int:
    """Distinct parameters of the preset's LM, built on the meta device (shapes only, no storage)."""
    with torch.device("meta"):
        lm = kind_of(preset)(ModelConfig.from_preset(preset))
    return count_parameters(lm.model)


def test_every_family_has_a_tiny_and_a_published_preset():
    assert set(TINY + PUBLISHED) <= set(preset_names())
    for name in preset_names():
        assert name.split("-")[0] in KIND, f"preset {name}: add its LM kind to KIND"


@pytest.mark.parametrize("name", preset_names())
def test_preset_parses_and_round_trips(name):
    cfg = ModelConfig.from_preset(name)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    assert ModelConfig.from_file(preset_dir().joinpath(f"{name}.yaml")) == cfg


def _inputs(kind, vocab: int) -> dict:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, vocab, (2, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0  # right padding on one row
    batch = {"input_ids": ids, "attention_mask": mask}
    if kind is Seq2SeqLM:
        batch["decoder_input_ids"] = torch.randint(1, vocab, (2, 7), generator=g)
    elif kind is PrefixLM:
        batch["prefix_lengths"] = torch.tensor([4, 6])
    elif kind is MaskedLM:
        batch["token_type_ids"] = (torch.arange(12) >= 6).long().expand(2, 12)
    return batch


@pytest.mark.parametrize("name", TINY)
def test_tiny_preset_builds_and_runs_forward(name):
    torch.manual_seed(0)
    kind = kind_of(name)
    cfg = ModelConfig.from_preset(name)
    lm = kind(cfg).eval()
    batch = _inputs(kind, cfg.vocab_size)
    with torch.no_grad():
        logits = lm(**batch)
    length = batch.get("decoder_input_ids", batch["input_ids"]).shape[1]
    assert logits.shape == (2, length, cfg.vocab_size)
    assert torch.isfinite(logits).all()


def test_llama_7b_has_its_published_size():
    assert meta_count("llama-7b") == 6_738_415_616


def _hf_reference(name: str) -> int:
    """transformers' own count for the published HF config of ``name`` (an independent oracle)."""
    import transformers
    t = transformers
    # The published config.json values of gpt2, bigscience/bloom-560m, google/t5-v1_1-base,
    # bert-base-uncased and the 7B LLaMA, written out by hand.
    builders = {
        "gpt2": lambda: t.GPT2LMHeadModel(t.GPT2Config(
            vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12)),
        "bloom-560m": lambda: t.BloomForCausalLM(t.BloomConfig(
            vocab_size=250880, hidden_size=1024, n_layer=24, n_head=16)),
        "t5-v1_1-base": lambda: t.T5ForConditionalGeneration(t.T5Config(
            vocab_size=32128, d_model=768, d_kv=64, d_ff=2048, num_layers=12, num_decoder_layers=12,
            num_heads=12, feed_forward_proj="gated-gelu", tie_word_embeddings=False)),
        "bert-base": lambda: t.BertForMaskedLM(t.BertConfig(
            vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
            intermediate_size=3072, max_position_embeddings=512, type_vocab_size=2)),
        "llama-7b": lambda: t.LlamaForCausalLM(t.LlamaConfig(
            vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
            num_attention_heads=32, num_key_value_heads=32, tie_word_embeddings=False)),
    }
    with torch.device("meta"):
        model = builders[name]()
    count = count_parameters(model)
    if name == "t5-v1_1-base" and model.lm_head.weight is model.shared.weight:
        # transformers 5 always ties T5's lm_head to the shared embedding, even for v1.1, whose
        # released checkpoints carry a separate lm_head matrix; count that matrix as released.
        count += model.lm_head.weight.numel()
    return count


@pytest.mark.parametrize(
    "name, published",
    [("gpt2", 124_439_808), ("bloom-560m", 559_214_592), ("t5-v1_1-base", 247_577_856),
     ("bert-base", 109_514_298), ("llama-7b", 6_738_415_616)],
)
def test_published_size_equals_transformers(name, published):
    ours = meta_count(name)
    assert ours == _hf_reference(name)
    assert ours == published


@pytest.mark.parametrize("name, published", [("glm-130b", 130e9), ("palm-8b", 8.6e9)])
def test_published_size_within_two_percent(name, published):
    ours = meta_count(name)
    assert abs(ours - published) / published < 0.02, f"{name}: {ours:,} parameters vs published {published:,.0f}"


def test_presets_load_from_an_installed_wheel(tmp_path):
    """Build a wheel from a copy of the source, install it into a bare folder, and load a preset
    there with the working directory elsewhere: the YAML must travel inside the package."""
    src = tmp_path / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    for item in ("pyproject.toml", "README.md", "setup.py", "MANIFEST.in", "llm_modules_lm_eval.py",
                 "llm_modules_lm_eval.pth"):
        shutil.copy(ROOT / item, src / item)
    for folder in ("llm_modules", "configs"):
        shutil.copytree(ROOT / folder, src / folder, ignore=ignore)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(src)],
                   check=True, cwd=src, capture_output=True, timeout=120)
    (wheel,) = (tmp_path / "dist").glob("llm_modules-*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    assert "llm_modules/configs/models/llama-7b.yaml" in shipped
    # the hook that registers `lm_eval --model llm-modules` (tests/integration/test_lm_eval_model.py)
    assert {"llm_modules_lm_eval.pth", "llm_modules_lm_eval.py"} <= shipped
    # every YAML under configs/ (strategy presets, training configs) travels too
    missing = {f"llm_modules/configs/{p.relative_to(ROOT / 'configs').as_posix()}"
               for p in (ROOT / "configs").rglob("*.yaml")} - shipped
    assert not missing, f"not in the wheel (list the folder under [tool.setuptools] packages): {sorted(missing)}"

    site = tmp_path / "site"
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, timeout=120)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    probe = (
        "import llm_modules, sys\n"
        "from llm_modules import ModelConfig\n"
        "from llm_modules.config import preset_dir\n"
        "cfg = ModelConfig.from_preset('llama-tiny')\n"
        "print(llm_modules.__file__)\n"
        "print(preset_dir())\n"
        "print(cfg.d_model)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = subprocess.run([sys.executable, "-c", probe], cwd=elsewhere, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    module_file, presets, d_model = out.stdout.split()
    assert Path(module_file).is_relative_to(site), "the wheel's copy was not the one imported"
    assert Path(presets).is_relative_to(site / "llm_modules" / "configs")
    assert int(d_model) == ModelConfig.from_preset("llama-tiny").d_model
