"""Hugging Face folders whose model.safetensors lies (header length, offsets, shapes, JSON) or whose
weights hold no finite value: ``from_hf``, ``convert from-hf`` and ``generate`` on the folder refuse
in one line naming the file (or tensor) and the problem. The files are crafted byte by byte."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

from llm_modules import CausalLM, ModelConfig, from_hf, to_hf
from llm_modules.registry import ConfigError
from llm_modules.safetensors_check import check_header

from _checkpoint_faults import refused


def safetensors_bytes(header: dict | bytes, data: bytes, length: int | None = None) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if length is None else length) + raw + data


ENTRY = {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}
LIES = {
    "huge header length": (safetensors_bytes({"w": ENTRY}, bytes(16), length=1 << 62), "header length field"),
    "offsets past the end": (safetensors_bytes({"w": ENTRY}, bytes(8)), "run past the end of the file"),
    "shape larger than its data": (
        safetensors_bytes({"w": {"dtype": "F32", "shape": [1000], "data_offsets": [0, 16]}}, bytes(16)),
        "needs 4,000 bytes but its data_offsets hold 16"),
    "header not JSON": (safetensors_bytes(b"\xff\xfe not json {", bytes(16)), "header is not valid JSON"),
    "header not an object": (safetensors_bytes(b"[1, 2]", bytes(16)), "not an object"),
    "too short": (b"\x01\x02", "too short"),
}


@pytest.fixture
def hf_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "hf"
    torch.manual_seed(0)
    to_hf(CausalLM(ModelConfig(vocab_size=64, d_model=32, n_layers=1, n_heads=4, max_seq_len=32)), folder)
    return folder


@pytest.mark.parametrize("lie", list(LIES))
def test_a_lying_safetensors_header_is_one_line_naming_the_file(hf_folder, capsys, lie):
    content, problem = LIES[lie]
    weights = hf_folder / "model.safetensors"
    weights.write_bytes(content)
    with pytest.raises(ConfigError, match=problem) as err:
        from_hf(hf_folder)
    assert str(weights) in str(err.value)
    refused(["convert", "from-hf", str(hf_folder), "out.ckpt"], capsys, str(weights), problem)
    refused(["generate", str(hf_folder), "--prompt-ids", "1,2"], capsys, str(weights), problem)


def test_the_header_check_accepts_what_safetensors_writes(tmp_path):
    tensors = {"a": torch.zeros(3, 5), "b": torch.ones(2, dtype=torch.bfloat16), "c": torch.zeros(0),
               "d": torch.arange(4, dtype=torch.int64)}
    save_file(tensors, tmp_path / "x.safetensors", metadata={"k": "v"})
    header = check_header(tmp_path / "x.safetensors")
    assert header["__metadata__"] == {"k": "v"} and set(header) - {"__metadata__"} == set(tensors)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_weight_with_no_finite_value_is_refused_naming_it(hf_folder, capsys, value):
    weights = hf_folder / "model.safetensors"
    tensors = load_file(weights)
    name = sorted(k for k, v in tensors.items() if v.dim() == 2)[0]
    tensors[name] = torch.full_like(tensors[name], value)
    save_file(tensors, weights, metadata={"format": "pt"})
    with pytest.raises(ConfigError, match="holds no finite value") as err:
        from_hf(hf_folder)
    assert repr(name) in str(err.value)
    refused(["generate", str(hf_folder), "--prompt-ids", "1,2"], capsys, name, "no finite value")
    # one NaN among finite values is a model's business, not refused at load
    tensors[name] = torch.zeros_like(tensors[name])
    tensors[name][0, 0] = value
    save_file(tensors, weights, metadata={"format": "pt"})
    from_hf(hf_folder)
