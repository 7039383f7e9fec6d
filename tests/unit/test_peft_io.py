"""Adapter-only files (peft.io): small, self-describing, strict, atomic, and refusing the wrong base."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import llm_modules.peft.io as peft_io
from llm_modules import ModelConfig
from llm_modules.nn.lm import DecoderLM
from llm_modules.peft import (
    QLoRA,
    applied_peft,
    apply_peft,
    load_adapter,
    read_adapter,
    save_adapter,
)
from llm_modules.registry import ConfigError


def build(seed: int = 0, **overrides) -> DecoderLM:
    torch.manual_seed(seed)
    return DecoderLM(ModelConfig.from_preset("llama-tiny", **overrides)).eval()


def randomize(model: nn.Module, method) -> None:
    """Stand-in for training: every method tensor gets a distinct non-zero value."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name in method.added_keys:
                param.normal_(0, 0.05)


IDS = torch.randint(1, 512, (2, 8), generator=torch.Generator().manual_seed(3))


def test_round_trip_into_a_fresh_base_and_small_file(tmp_path):
    base = build(d_model=128)
    model = copy.deepcopy(base)
    method = apply_peft(model, {"name": "lora", "r": 4, "targets": ["*.q", "*.v"]})
    randomize(model, method)
    (tmp_path / "run").mkdir()
    path = save_adapter(tmp_path / "run", model, method)  # a directory gets adapter.safetensors
    assert path == tmp_path / "run" / "adapter.safetensors"

    full = tmp_path / "full.safetensors"
    save_file({k: v.contiguous() for k, v in base.state_dict().items()}, str(full))  # untied head: no shared tensors
    assert path.stat().st_size < 0.05 * full.stat().st_size

    fresh = copy.deepcopy(base)
    loaded = load_adapter(path, fresh)
    assert loaded.describe() == method.describe() and applied_peft(fresh) == (loaded,)
    with torch.no_grad():
        assert torch.equal(fresh(IDS), model(IDS))
        assert not torch.equal(fresh(IDS), base(IDS))


def test_metadata_holds_the_spec_and_the_base_config(tmp_path):
    model = build()
    method = apply_peft(model, {"name": "lora", "r": 2, "rslora": True})
    tensors, spec, config = read_adapter(save_adapter(tmp_path / "a.safetensors", model, method))
    assert spec == json.loads(json.dumps(method.describe()))
    assert config["d_model"] == 64 and config == json.loads(json.dumps(model.config.to_dict()))
    assert set(tensors) == set(method.added_keys)


def test_adapter_method_round_trips(tmp_path):
    base = build()
    model = copy.deepcopy(base)
    method = apply_peft(model, {"name": "adapter", "bottleneck": 4, "placement": "parallel"})
    randomize(model, method)
    fresh = copy.deepcopy(base)
    load_adapter(save_adapter(tmp_path / "ad.safetensors", model, method), fresh)
    with torch.no_grad():
        assert torch.equal(fresh(IDS), model(IDS))


def test_loads_into_the_method_already_applied(tmp_path):
    model = build()
    method = apply_peft(model, {"name": "lora", "r": 2})
    randomize(model, method)
    path = save_adapter(tmp_path / "a.safetensors", model, method)
    target = build()
    mine = apply_peft(target, {"name": "lora", "r": 2})
    assert load_adapter(path, target) is mine and len(applied_peft(target)) == 1
    assert torch.equal(target.stack.layers[0].attn.q.lora_b, model.stack.layers[0].attn.q.lora_b)
    other = build()
    apply_peft(other, {"name": "lora", "r": 3})
    with pytest.raises(ConfigError, match="already has peft 'lora' with other options"):
        load_adapter(path, other)


def test_wrong_base_is_refused(tmp_path):
    model = build()
    method = apply_peft(model, "lora")
    path = save_adapter(tmp_path / "a.safetensors", model, method)
    with pytest.raises(ConfigError, match=r"different base model: d_model: 64 \(adapter\) vs 96 \(model\)"):
        load_adapter(path, build(d_model=96))
    load_adapter(path, build(dropout=0.1))  # a run-time field is not a different base


def test_keys_must_fit_exactly(tmp_path):
    model = build()
    method = apply_peft(model, {"name": "lora", "r": 2})
    path = save_adapter(tmp_path / "a.safetensors", model, method)
    with pytest.raises(ConfigError, match="unexpected 4"):
        load_adapter(path, build(), method={"name": "lora", "r": 2, "targets": ["*.q"]})
    with pytest.raises(ConfigError, match="missing 4"):
        load_adapter(path, build(), method={"name": "lora", "r": 2, "targets": ["*.q", "*.k", "*.v"]})
    with pytest.raises(ConfigError, match="other shapes"):
        load_adapter(path, build(), method={"name": "lora", "r": 3})


def test_qlora_file_loads_on_the_float_base_as_lora(tmp_path):
    """Simulated: a qlora run's file has lora's keys and qlora's spec."""
    spec = {"name": "qlora", "r": 2, "alpha": 4}
    model = build()
    method = apply_peft(model, QLoRA(r=2, alpha=4).as_lora())
    randomize(model, method)
    path = tmp_path / "q.safetensors"
    tensors = {k: v.contiguous() for k, v in model.state_dict().items() if k in method.added_keys}
    save_file(tensors, str(path), metadata={"format": peft_io.FORMAT, "peft": json.dumps(spec)})
    fresh = build()
    load_adapter(path, fresh, method=QLoRA(**{k: v for k, v in spec.items() if k != "name"}).as_lora())
    with torch.no_grad():
        assert torch.equal(fresh(IDS), model(IDS))


def test_save_is_atomic(tmp_path, monkeypatch):
    model = build()
    method = apply_peft(model, "lora")
    path = save_adapter(tmp_path / "a.safetensors", model, method)
    good = path.read_bytes()

    def broken(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(peft_io, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        save_adapter(path, model, method)
    assert path.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors"]


def test_refusals(tmp_path):
    model = build()
    method = apply_peft(model, "lora")
    method.merge(model)
    with pytest.raises(ConfigError, match="unmerge it before saving"):
        save_adapter(tmp_path / "a.safetensors", model, method)
    method.unmerge(model)
    path = save_adapter(tmp_path / "a.safetensors", model, method)
    method.merge(model)
    with pytest.raises(ConfigError, match="unmerge before loading"):
        load_adapter(path, model)
    plain = tmp_path / "plain.safetensors"
    save_file({"x": torch.zeros(1)}, str(plain))
    with pytest.raises(ConfigError, match="not an llm-modules adapter file"):
        load_adapter(plain, build())
    with pytest.raises(FileNotFoundError):
        load_adapter(tmp_path / "none.safetensors", build())
