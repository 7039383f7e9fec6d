"""QLoRA (peft.qlora): a clear refusal without CUDA/bitsandbytes; on a GPU, LoRA over NF4 weights.

GPU part: ``python -m pytest -q tests/unit/test_peft_qlora.py`` on a CUDA machine with bitsandbytes.
"""

from __future__ import annotations

import copy
import importlib.util
import sys

import pytest
import torch

from llm_modules import ModelConfig
from llm_modules.nn.lm import DecoderLM
from llm_modules.peft import LoRALinear, QLoRA, apply_peft
from llm_modules.registry import ConfigError

HAS_GPU_QLORA = torch.cuda.is_available() and importlib.util.find_spec("bitsandbytes") is not None


def build() -> DecoderLM:
    torch.manual_seed(0)
    return DecoderLM(ModelConfig.from_preset("llama-tiny")).eval()


def test_refuses_without_cuda_naming_the_way_out(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    model = build()
    with pytest.raises(ConfigError, match=r"model\.peft: qlora needs a CUDA GPU.*no CUDA GPU.*use peft 'lora'"):
        apply_peft(model, {"name": "qlora", "r": 4})
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    assert all(p.requires_grad for p in model.parameters())


def test_refuses_without_bitsandbytes(monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import raises ImportError
    with pytest.raises(ConfigError, match=r"bitsandbytes cannot be imported.*pip install bitsandbytes"):
        apply_peft(build(), "qlora")


def test_options_are_checked_without_a_gpu():
    with pytest.raises(ConfigError, match="compute_dtype must be one of"):
        QLoRA(compute_dtype="int8")
    with pytest.raises(ConfigError, match="blocksize"):
        QLoRA(blocksize=100)
    with pytest.raises(ConfigError, match=r"no option 'rnk' \(did you mean 'r'\?\).*blocksize.*rslora"):
        apply_peft(build(), {"name": "qlora", "rnk": 4})  # LoRA's options, written once, still checked
    spec = QLoRA(r=4, alpha=8, targets=["*.q"], rslora=True).as_lora()
    assert spec == {"name": "lora", "r": 4, "alpha": 8.0, "dropout": 0.0, "targets": ["*.q"], "rslora": True, "init": "kaiming"}


@pytest.mark.skipif(not HAS_GPU_QLORA, reason="needs a CUDA GPU and bitsandbytes")
def test_qlora_is_lora_on_the_dequantized_weights():
    import bitsandbytes.functional as bnbf

    from llm_modules.peft.qlora import QLoRALinear

    base = build().cuda()
    model = copy.deepcopy(base)
    method = apply_peft(model, {"name": "qlora", "r": 4, "compute_dtype": "float32", "targets": ["*.q", "*.v", "*.ffn.down"]})
    layers = {n: m for n, m in model.named_modules() if isinstance(m, QLoRALinear)}
    assert len(layers) == 6 and all(m.weight.dtype == torch.uint8 for m in layers.values())
    with torch.no_grad():
        for layer in layers.values():
            layer.lora_b.normal_(0, 0.05)

    reference = copy.deepcopy(base)
    apply_peft(reference, {"name": "lora", "r": 4, "targets": ["*.q", "*.v", "*.ffn.down"]})
    with torch.no_grad():
        for name, layer in layers.items():
            twin = reference.get_submodule(name)
            twin.weight.copy_(bnbf.dequantize_4bit(layer.weight.data, layer.weight.quant_state).float())
            twin.lora_a.copy_(layer.lora_a)
            twin.lora_b.copy_(layer.lora_b)

    ids = torch.randint(1, 512, (2, 16), device="cuda", generator=torch.Generator("cuda").manual_seed(1))
    logits = model(ids)
    torch.testing.assert_close(logits, reference(ids), atol=2e-3, rtol=2e-3)

    logits.float().logsumexp(-1).mean().backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad == set(method.added_keys)
    assert all(p.grad.abs().sum() > 0 for n, p in model.named_parameters() if n.endswith("lora_b"))
    with pytest.raises(ConfigError, match="cannot merge into 4-bit"):
        method.merge(model)
