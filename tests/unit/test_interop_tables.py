"""Interop declares what it supports: every family's allow-list covers every ModelConfig field (a new
field, component or option is refused until a family maps it), its weight table accounts for every
tensor exactly once both ways, and interop itself never imports models or training."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file, save_file

import llm_modules
from llm_modules import CausalLM, MaskedLM, ModelConfig, Seq2SeqLM
from llm_modules.interop import HF_FAMILIES, read_hf_model, to_hf
from llm_modules.interop.weights import Repeat, Tied, grouped_per_head, rotary_halves, side_by_side
from llm_modules.quantization.methods import quantize
from llm_modules.registry import REGISTRIES, ConfigError
from llm_modules.registry import Entry as RegistryEntry

V = 64
#: one tiny model each family represents exactly, tied and untied
FITTING = {
    "llama": (CausalLM, dict(norm="rmsnorm", activation="swiglu", position="rope", bias=False)),
    "gpt2": (CausalLM, dict(activation={"name": "gelu", "approximate": "tanh"})),
    "bloom": (CausalLM, dict(activation={"name": "gelu", "approximate": "tanh"}, position="alibi",
                             embedding_norm=True)),
    "t5": (Seq2SeqLM, dict(norm="rmsnorm", activation="swiglu", position="t5", bias=False, attention_scale=1.0,
                           n_encoder_layers=1)),
    "bert": (MaskedLM, dict(residual="post", activation="gelu", embedding_norm=True, head_transform=True,
                            lm_head_bias=True, type_vocab_size=2)),
    "mistral": (CausalLM, dict(norm="rmsnorm", activation="swiglu", position="rope", bias=False, sliding_window=8)),
    "qwen2": (CausalLM, dict(norm="rmsnorm", activation="swiglu", position="rope", bias=False, qkv_bias=True,
                             sliding_window=8, layer_types=["full", "sliding"])),
    "qwen3": (CausalLM, dict(norm="rmsnorm", activation="swiglu", position="rope", bias=False, qk_norm="head")),
}


def family(name: str):
    return HF_FAMILIES.get(name).factory()


def fitting(name: str, **changes) -> tuple[type, ModelConfig]:
    kind, fields = FITTING[name]
    config = ModelConfig(vocab_size=V, d_model=32, n_layers=2, n_heads=4, max_seq_len=32, **{**fields, **changes})
    return kind, config


@pytest.mark.parametrize("name", sorted(FITTING))
def test_every_family_declares_exactly_the_config_fields(name):
    """One rule per ModelConfig field: none missing (a field nobody decided on), none stale."""
    declared = set(family(name).fields)
    assert declared == {f.name for f in dataclasses.fields(ModelConfig)}
    kind, config = fitting(name)
    assert family(name).mismatches(config, kind) == []


def test_a_new_config_field_is_refused_by_every_family_until_mapped(tmp_path):
    """A field added to ModelConfig (here by a subclass) counts as unsupported everywhere, even at
    its default, and to_hf writes nothing."""

    @dataclasses.dataclass
    class Extended(ModelConfig):
        new_knob: int = 0

    for name in FITTING:
        kind, config = fitting(name)
        problems = family(name).mismatches(Extended(**config.to_dict()), kind)
        assert len(problems) == 1 and problems[0].startswith("new_knob=0 (a field the"), problems
    kind, config = fitting("llama")
    with pytest.raises(ConfigError, match="(?s)no Hugging Face family.*llama: new_knob=0") as err:
        to_hf(kind(Extended(**config.to_dict())), tmp_path / "out")
    assert "gpt2: " in str(err.value) and "t5: " in str(err.value)
    assert not (tmp_path / "out").exists()


def test_a_new_component_or_option_is_refused(monkeypatch):
    """A norm registered later is not any family's norm, and a new option of an allowed
    component (here RoPE with a made-up stretch option) is refused rather than silently dropped."""
    rope = REGISTRIES["position"].get("rope").factory

    def scaled_rope(head_dim, theta=10000.0, fraction=1.0, interleaved=False, scaling=None, local_theta=None, stretch=1.0):
        return rope(head_dim, theta=theta, fraction=fraction, interleaved=interleaved)

    monkeypatch.setitem(REGISTRIES["position"]._entries, "rope", RegistryEntry("rope", scaled_rope, "tests"))
    kind, config = fitting("llama")
    problems = family("llama").mismatches(config, kind)
    assert problems == ["position 'rope' with stretch=1.0 (the llama family does not map the option 'stretch'; "
                        "leave it out)"]

    rmsnorm = REGISTRIES["norm"].get("rmsnorm").factory
    monkeypatch.setitem(REGISTRIES["norm"]._entries, "rmsnorm2", RegistryEntry("rmsnorm2", rmsnorm, "tests"))
    for name in FITTING:
        kind, config = fitting(name, norm="rmsnorm2")
        assert any(p.startswith("norm 'rmsnorm2' (the") for p in family(name).mismatches(config, kind)), name


def test_refusals_name_the_value_what_the_family_has_and_the_fix(tmp_path):
    kind, config = fitting("llama", sliding_window=8, norm="layernorm")
    with pytest.raises(ConfigError) as err:
        to_hf(kind(config), tmp_path / "out", family="llama")
    message = str(err.value)
    assert "sliding_window=8 (the llama family has sliding_window=None; set sliding_window: null)" in message
    assert "norm 'layernorm' (the llama family has 'rmsnorm')" in message
    assert message.endswith("change those fields of the model's config, or export with --format ckpt")


@pytest.mark.parametrize("name", sorted(FITTING))
@pytest.mark.parametrize("tied", [True, False])
def test_weight_table_maps_every_tensor_once_and_round_trips(name, tied):
    """The table's names are the model's state dict exactly (each once); export then import gives
    back the same tensors."""
    kind, config = fitting(name, tie_embeddings=tied)
    if name == "t5" and tied:
        config = config.replace(output_scale=config.d_model**-0.5)
    module = kind(config)
    state = module.model.state_dict()
    table = family(name).weight_table(config)
    ours = [n for e in table.expanded() for n in ((e.ours,) if isinstance(e, Tied) else e.our_names)]
    assert sorted(ours) == sorted(state)
    hf = family(name).weights_to_hf(state, config)
    assert len(set(map(id, hf.values()))) == len(hf)  # no tensor stored twice under one storage
    back = family(name).weights_from_hf(hf, config)
    assert sorted(back) == sorted(state)
    for key, tensor in state.items():
        assert torch.equal(back[key], tensor), key


def test_per_layer_entries_are_templates():
    kind, config = fitting("gpt2")
    table = family("gpt2").weight_table(config)
    (layers,) = [e for e in table.entries if isinstance(e, Repeat)]
    assert layers.count == config.n_layers and all("{i}" in e.theirs for e in layers.entries)


def test_fused_transforms_are_inverse():
    rows, columns = torch.randn(12, 5), torch.randn(5, 12)
    for transform, t in ((side_by_side(3, dim=0), rows), (side_by_side(3, dim=1, transpose=True), columns),
                         (grouped_per_head(2), rows), (rotary_halves(2), rows)):
        assert torch.equal(transform.join(transform.split(t)), t), transform.name
    assert [p.shape for p in side_by_side(3, dim=1, transpose=True).split(columns)] == [(4, 5)] * 3
    q, k, v = grouped_per_head(2).split(torch.arange(12.0))
    assert q.tolist() == [0, 1, 6, 7]  # head 0's q, then head 1's
    (halves,) = rotary_halves(2).split(torch.arange(8.0))  # HF halves -> our adjacent pairs
    assert halves.tolist() == [0, 2, 1, 3, 4, 6, 5, 7]


def test_export_refuses_a_tensor_the_format_has_no_place_for(tmp_path):
    kind, config = fitting("gpt2")
    module = kind(config)
    module.model.register_parameter("extra", torch.nn.Parameter(torch.zeros(3)))
    with pytest.raises(ConfigError, match=r"the model has 1 tensor\(s\) the gpt2 format has no place for, e.g. \['extra'\]"):
        to_hf(module, tmp_path / "out")
    assert not (tmp_path / "out" / "config.json").exists()


def test_export_refuses_a_model_without_its_float_tensors(tmp_path):
    """A quantized model has no plain weight where the table expects one: one ConfigError line."""
    kind, config = fitting("llama")
    with pytest.raises(ConfigError, match=r"no tensor 'stack.layers.0.attn.q.weight' .*quantized"):
        to_hf(quantize(kind(config), "int8-weight"), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_import_refuses_a_tensor_left_over(tmp_path):
    kind, config = fitting("llama")
    to_hf(kind(config), tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    save_file({**weights, "model.layers.9.mlp.up_proj.weight": torch.zeros(2, 2)}, tmp_path / "model.safetensors")
    with pytest.raises(ConfigError, match=r"1 tensor\(s\) that config.json does not account for.*layers\.9"):
        read_hf_model(tmp_path)


def test_read_hf_model_is_plain_data_and_from_hf_builds_it(tmp_path):
    """``read_hf_model`` (what init_from uses) gives the kind's name, the config and our state dict
    without building a model; ``llm_modules.from_hf`` builds the same."""
    kind, config = fitting("bert")
    module = kind(config)
    to_hf(module, tmp_path)
    assert not (tmp_path / "generation_config.json").exists()  # a masked LM does not generate
    (tmp_path / "tokenizer.model").write_bytes(b"not really sentencepiece")
    read = read_hf_model(tmp_path)
    assert read.kind == "MaskedLM" and read.config.d_model == 32 and read.tokenizer == b"not really sentencepiece"
    assert sorted(read.state) == sorted(module.model.state_dict())
    with pytest.raises(ConfigError, match="is not a SentencePiece model"):  # from_hf brings the tokenizer along
        llm_modules.from_hf(tmp_path)
    (tmp_path / "tokenizer.model").unlink()
    built = llm_modules.from_hf(tmp_path)
    assert type(built) is MaskedLM
    for key, tensor in module.model.state_dict().items():
        assert torch.equal(built.model.state_dict()[key], tensor), key


def test_to_hf_takes_anything_shaped_like_a_module(tmp_path):
    """Duck typing: ``config``, ``model``, ``tokenizer``, and the LM kind as ``kind``."""
    kind, config = fitting("llama")
    model = kind(config).model
    plain = SimpleNamespace(kind="CausalLM", config=config, model=model, tokenizer=None, tokenizer_bytes=None)
    to_hf(plain, tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "llama"
    with pytest.raises(ConfigError, match="SimpleNamespace is not a causal decoder"):
        to_hf(SimpleNamespace(config=config, model=model, tokenizer=None), tmp_path, family="llama")


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_interop_imports_nothing_above_it():
    """interop sits below models: no import of models, training, alignment, the CLI or Lightning,
    at module level or inside functions."""
    folder = Path(inspect.getfile(HF_FAMILIES.get("llama").factory)).parent
    above = ("llm_modules.models", "llm_modules.training", "llm_modules.alignment", "llm_modules.cli",
             "llm_modules.hf", "lightning", "pytorch_lightning")
    for path in sorted(folder.glob("*.py")):
        bad = [n for n in _imports(path) if n.startswith(above)]
        assert not bad, f"{path.name} imports {bad}"
