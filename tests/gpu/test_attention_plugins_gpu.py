"""GPU: the flash_attn and xformers backends agree with sdpa in bf16, forward and backward, with and
without packed documents, and whole models train on them.

Skipped without CUDA, and per backend without its package (pip install 'llm-modules-flash-attn[kernels]',
pip install 'llm-modules-xformers[kernels]'). Run on a GPU machine with:

    python -m pytest -q tests/gpu/test_attention_plugins_gpu.py
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from _core_helpers import KINDS, tiny_config
from llm_modules.nn.attention_backends import SDPAttention
from llm_modules.nn.masks import AttentionMask
from llm_modules.nn.positions import alibi_slopes
from llm_modules.registry import ATTENTIONS

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

PACKAGES = {"flash_attn": "flash_attn", "xformers": "xformers"}
B, H, HKV, T, D = 2, 8, 2, 384, 64
TOLERANCE = 2e-2  # relative (norm) error between two bf16 kernels; bf16 itself carries ~4e-3


def _backend(name):
    if importlib.util.find_spec(PACKAGES[name]) is None:
        pytest.skip(f"{PACKAGES[name]} is not installed (pip install 'llm-modules-{name.replace('_', '-')}[kernels]')")
    if name == "flash_attn" and torch.cuda.get_device_capability()[0] < 8:
        pytest.skip("flash-attn needs compute capability 8.0+")
    return ATTENTIONS.build(name, head_dim=D)


def _close(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    error = ((got.float() - want.float()).norm() / want.float().norm().clamp_min(1e-6)).item()
    assert error < TOLERANCE, f"{what}: relative error {error:.2e} >= {TOLERANCE}"


def _documents():
    lengths = [[100, 37, 200, 47], [384]]  # a packed row and a single-document row
    return torch.tensor([[d for d, n in enumerate(row) for _ in range(n)] for row in lengths], device="cuda")


def _padding():
    mask = torch.ones(B, T, dtype=torch.bool, device="cuda")
    mask[1, -50:] = False
    return mask


MASKS = {
    "causal": lambda: dict(causal=True),
    "bidirectional": lambda: dict(),
    "causal-documents": lambda: dict(causal=True, documents=_documents()),
    "bidirectional-documents-padding": lambda: dict(documents=_documents(), key_padding=_padding()),
    "causal-padding": lambda: dict(causal=True, key_padding=_padding()),
    "window": lambda: dict(causal=True, window=64),
    "window-documents": lambda: dict(causal=True, window=64, documents=_documents()),
}


@pytest.mark.parametrize("alibi", [False, True], ids=["no-bias", "alibi"])
@pytest.mark.parametrize("mask_name", sorted(MASKS))
@pytest.mark.parametrize("name", ["flash_attn", "xformers"])
def test_backend_matches_sdpa_forward_and_backward_in_bf16(name, mask_name, alibi):
    backend = _backend(name)
    mask = AttentionMask(T, T, **MASKS[mask_name]())
    g = torch.Generator(device="cuda").manual_seed(0)
    leaves = [torch.randn(B, h, T, D, generator=g, device="cuda", dtype=torch.bfloat16).requires_grad_()
              for h in (H, HKV, HKV)]
    slopes = alibi_slopes(H).cuda()
    dense_bias = None
    if alibi:
        distance = (torch.arange(T, device="cuda").view(-1, 1) - torch.arange(T, device="cuda").view(1, -1)).abs()
        dense_bias = -slopes.view(1, H, 1, 1) * distance.float()
    plugin_bias = (slopes if name == "flash_attn" else dense_bias) if alibi else None
    grad_out = torch.randn(B, H, T, D, generator=g, device="cuda", dtype=torch.bfloat16)
    real = mask.key_padding.view(B, 1, T, 1) if mask.key_padding is not None else torch.ones(1, 1, 1, 1, device="cuda")
    results = []
    for kernel, bias in ((SDPAttention(), dense_bias), (backend, plugin_bias)):
        q, k, v = (t.detach().clone().requires_grad_() for t in leaves)
        out = kernel(q, k, v, mask, bias, D ** -0.5)
        (out * grad_out * real).sum().backward()  # padding queries are never read
        results.append((out * real, q.grad, k.grad, v.grad))
    for what, got, want in zip(("output", "dq", "dk", "dv"), results[1], results[0]):
        _close(got, want, f"{name} {mask_name} {what}")


@pytest.mark.parametrize("name, position", [("flash_attn", "alibi"), ("flash_attn", "rope"), ("xformers", "t5"),
                                            ("xformers", "rope")])
def test_models_train_on_the_backend_with_packed_documents(name, position):
    _backend(name)
    options = dict(position=position, n_kv_heads=2, d_model=128, n_heads=4, max_seq_len=T, vocab_size=256)
    torch.manual_seed(0)
    reference = KINDS["CausalLM"](tiny_config(attention="sdpa", **options)).cuda()
    plugged = KINDS["CausalLM"](tiny_config(attention=name, **options)).cuda()
    plugged.load_state_dict(reference.state_dict())
    ids = torch.randint(2, 256, (B, T), device="cuda")
    batch = {"input_ids": ids, "document_ids": _documents()}
    losses, grads = [], []
    for lm in (reference, plugged):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = lm.compute_loss(batch)["loss"]
        loss.backward()
        losses.append(loss.detach())
        grads.append(lm.model.stack.layers[0].attn.q.weight.grad)
    assert abs(losses[1] - losses[0]) < 1e-2 * losses[0]
    _close(grads[1], grads[0], f"{name} {position} q-projection gradient")
