"""The attention plugins (plugins/flash_attn, plugins/xformers) on a CPU machine.

- discovery: installed as distributions, loaded through the ``llm_modules.plugins`` entry point,
  listed by ``llm-modules registry`` with the providing plugin;
- refusals at model build: no CUDA, no package, an old GPU, and the combinations flash-attn cannot
  compute (T5's learned bias, PrefixLM, sparse stride), each message naming what to do instead;
- the plugins' own code (mask translation, unpadding, packed documents, ALiBi slopes, GQA, KV-cache
  offsets) against the eager backend, with the CUDA kernels replaced by reference implementations
  of their documented semantics (tests/_attention_references.py). The kernels themselves are
  compared with sdpa in tests/gpu/test_attention_plugins_gpu.py, on a GPU.
"""

from __future__ import annotations

import json
import sys
from importlib import metadata

import pytest
import torch

import _attention_references as refs
import llm_modules.registry as registry
from _core_helpers import VOCAB, build, same_weights, tiny_config
from llm_modules import CausalLM, ConfigError, MaskedLM, PrefixLM
from llm_modules.cli import main
from llm_modules.nn.attention_backends import EagerAttention
from llm_modules.nn.masks import AttentionMask
from llm_modules.nn.positions import alibi_slopes
from llm_modules.nn.varlen import segments

PLUGINS = {  # distribution: (entry-point module, backend name)
    "llm-modules-flash-attn": ("llm_modules_flash_attn", "flash_attn"),
    "llm-modules-xformers": ("llm_modules_xformers", "xformers"),
}
INSTALL_HINT = "pip install -e plugins/example -e plugins/flash_attn -e plugins/xformers (README's test command does)"


def require_installed(dist: str) -> None:
    try:
        metadata.distribution(dist)
    except metadata.PackageNotFoundError:
        pytest.fail(f"the plugin distribution {dist!r} is not installed; {INSTALL_HINT}", pytrace=False)


@pytest.mark.parametrize("dist", sorted(PLUGINS))
def test_plugins_are_discovered_through_their_entry_point_and_listed(dist, capsys):
    require_installed(dist)
    module, backend = PLUGINS[dist]
    entry_points = {ep.value for ep in metadata.distribution(dist).entry_points if ep.group == registry.PLUGIN_GROUP}
    assert entry_points == {module}
    registry.load_plugins()
    assert module in registry._loaded_modules and not registry.plugin_errors  # loaded by the entry point
    assert main(["registry", "--format", "json"]) == 0
    listed = {e["name"]: e for e in json.loads(capsys.readouterr().out)["attention"]}
    assert listed[backend]["provider"] == module and listed[backend]["doc"]
    assert "flash_attn" not in sys.modules and "xformers" not in sys.modules  # core and plugins import neither


@pytest.mark.parametrize("backend", ["flash_attn", "xformers"])
@pytest.mark.parametrize("kind", [CausalLM, MaskedLM])
def test_without_cuda_building_a_model_is_refused_with_the_alternative(backend, kind):
    with pytest.raises(ConfigError, match=rf"attention '{backend}' runs only on CUDA GPUs .*use attention 'sdpa'"):
        kind(tiny_config(attention=backend))


@pytest.fixture
def fake_gpu(monkeypatch):
    """torch reports an H100; whether the packages import is up to each test."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))


@pytest.mark.parametrize("backend, package, install", [
    ("flash_attn", "flash_attn", "pip install 'llm-modules-flash-attn[kernels]'"),
    ("xformers", "xformers", "pip install 'llm-modules-xformers[kernels]'"),
])
def test_on_a_gpu_without_the_package_the_message_says_what_to_install(fake_gpu, monkeypatch, backend, package,
                                                                        install):
    monkeypatch.setitem(sys.modules, package, None)  # import fails as if not installed
    monkeypatch.setitem(sys.modules, f"{package}.ops", None)
    with pytest.raises(ConfigError) as err:
        CausalLM(tiny_config(attention=backend))
    assert f"attention '{backend}' needs the {package.split('_')[0]}" in str(err.value)
    assert install in str(err.value) and "'sdpa'" in str(err.value)


def test_flash_attn_refuses_an_old_gpu_naming_the_backends_that_run_there(fake_gpu, monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    with pytest.raises(ConfigError, match=r"compute capability 8.0 or newer.*this one is 7.5.*'xformers' or 'sdpa'"):
        CausalLM(tiny_config(attention="flash_attn"))


@pytest.mark.parametrize("build_it, message", [
    (lambda: CausalLM(tiny_config(attention="flash_attn", position="t5")),
     r"not the learned additive bias that position 't5' needs; use attention 'xformers', 'sdpa' or 'eager'"),
    (lambda: PrefixLM(tiny_config(attention="flash_attn", position="rope")),
     r"cannot compute the prefix-LM mask .* PrefixLM needs; use attention 'flex' or 'sdpa'"),
    (lambda: CausalLM(tiny_config(attention="flash_attn", position="rope", sparse_stride=4)),
     r"cannot compute the sparse_stride pattern"),
    (lambda: CausalLM(tiny_config(attention={"name": "flash_attn", "deterministic": True}, position="rope",
                                  d_model=1024, n_heads=2, vocab_size=VOCAB)),
     r"heads of up to 256 dimensions; this model's have 512"),
])
def test_flash_attn_refuses_what_its_kernels_cannot_compute_on_any_machine(build_it, message):
    with pytest.raises(ConfigError, match=message):
        build_it()


# ---- the plugins' code against eager, with reference kernels ---------------------------------------------------

B, H, HKV, D = 2, 4, 2, 8
PAD_LEFT = torch.tensor([[True] * 7, [False, False, True, True, True, True, True]])
PAD_RIGHT = torch.tensor([[True] * 7, [True, True, True, True, True, False, False]])
DOCS = torch.tensor([[0, 0, 0, 1, 1, 2, 2], [0, 0, 1, 1, 1, 1, 1]])


def _positions(padding):
    return (padding.long().cumsum(-1) - 1).clamp_min(0)


MASKS = {  # name: (q_len, AttentionMask keyword arguments)
    "causal": (7, dict(causal=True)),
    "bidirectional": (7, dict()),
    "causal-left-padding": (7, dict(causal=True, key_padding=PAD_LEFT, positions=_positions(PAD_LEFT))),
    "right-padding": (7, dict(key_padding=PAD_RIGHT, positions=_positions(PAD_RIGHT))),
    "documents": (7, dict(causal=True, documents=DOCS)),
    "documents-bidirectional-padding": (7, dict(documents=DOCS, key_padding=PAD_RIGHT)),
    "window": (7, dict(causal=True, window=3)),
    "window-left-padding": (7, dict(causal=True, window=2, key_padding=PAD_LEFT, positions=_positions(PAD_LEFT))),
    "bidirectional-window-padding": (7, dict(window=2, key_padding=PAD_RIGHT)),
    "cache": (2, dict(causal=True, q_offset=5)),
    "cache-left-padding": (2, dict(causal=True, q_offset=5, key_padding=PAD_LEFT, positions=_positions(PAD_LEFT))),
    "cross-attention": (5, dict(key_padding=PAD_RIGHT)),
}


def _case(name, seed=0):
    q_len, kwargs = MASKS[name]
    mask = AttentionMask(q_len, 7, **kwargs)
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, q_len, D, generator=g)
    k, v = torch.randn(B, HKV, 7, D, generator=g), torch.randn(B, HKV, 7, D, generator=g)
    if mask.key_padding is not None and name != "cross-attention":  # padding queries are never read
        real = mask.key_padding[:, mask.q_offset:]
    else:
        real = torch.ones(B, q_len, dtype=torch.bool)
    return q, k, v, mask, real.view(B, 1, q_len, 1).expand(B, H, q_len, D)


def _alibi(mask):
    q = torch.arange(mask.q_len).view(-1, 1) + mask.q_offset
    return -alibi_slopes(H).view(1, H, 1, 1) * (q - torch.arange(mask.k_len).view(1, -1)).abs().float()


def _with_reference_kernels(monkeypatch, module, backend_class, kernels):
    """The plugin's backend, runnable on CPU: reference kernels, no CUDA requirement."""
    monkeypatch.setattr(module, "unavailable", lambda: None)
    monkeypatch.setattr(backend_class, "kernels", staticmethod(kernels))
    monkeypatch.setattr(backend_class, "require_tensors", staticmethod(lambda q: None))
    return backend_class


@pytest.fixture
def flash(monkeypatch):
    from llm_modules_flash_attn import backend

    return _with_reference_kernels(monkeypatch, backend, backend.FlashAttention, refs.flash_kernels)


@pytest.fixture
def xformers(monkeypatch):
    from llm_modules_xformers import backend

    return _with_reference_kernels(monkeypatch, backend, backend.XFormersAttention, refs.xformers_fmha)


@pytest.mark.parametrize("name, alibi", [(name, alibi) for name in sorted(MASKS) for alibi in (False, True)
                                         if not (alibi and name == "cross-attention")])  # no bias across stacks
def test_flash_attn_plugin_matches_eager(flash, name, alibi):
    q, k, v, mask, real = _case(name)
    slopes = alibi_slopes(H) if alibi else None
    out = flash()(q, k, v, mask, slopes, 0.3)
    expected = EagerAttention()(q, k, v, mask, _alibi(mask) if alibi else None, 0.3)
    torch.testing.assert_close(out[real], expected[real], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", sorted(MASKS))
def test_flash_attn_plugin_soft_caps_like_eager(flash, name):
    q, k, v, mask, real = _case(name)
    q = q * 4  # scores large enough that the cap bites
    out = flash()(q, k, v, mask, None, 0.3, softcap=1.5)
    expected = EagerAttention()(q, k, v, mask, None, 0.3, softcap=1.5)
    assert not torch.allclose(expected, EagerAttention()(q, k, v, mask, None, 0.3))
    torch.testing.assert_close(out[real], expected[real], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("bias", ["none", "alibi", "learned"])
@pytest.mark.parametrize("name", sorted(MASKS))
def test_xformers_plugin_matches_eager(xformers, name, bias):
    q, k, v, mask, real = _case(name)
    dense = {"none": None, "alibi": _alibi(mask),
             "learned": torch.randn(1, H, mask.q_len, 7, generator=torch.Generator().manual_seed(3))}[bias]
    out = xformers()(q, k, v, mask, dense, 0.3)
    torch.testing.assert_close(out[real], EagerAttention()(q, k, v, mask, dense, 0.3)[real], atol=1e-5, rtol=1e-5)


def test_xformers_additive_bias_passes_the_gradient_to_a_learned_bias(xformers):
    q, k, v, mask, _ = _case("causal-left-padding")
    bias = torch.randn(1, H, 7, 7, requires_grad=True)
    xformers()(q, k, v, mask, bias, 0.3).sum().backward()
    reference = bias.detach().clone().requires_grad_()
    EagerAttention()(q, k, v, mask, reference, 0.3).sum().backward()
    assert bias.grad.abs().sum() > 0
    torch.testing.assert_close(bias.grad, reference.grad, atol=1e-5, rtol=1e-5)


def test_segments_of_packed_documents_with_padding():
    seg = segments(AttentionMask(7, 7, causal=True, documents=DOCS, key_padding=PAD_RIGHT))
    assert seg.aligned and seg.q_lens == seg.k_lens == [3, 2, 2, 2, 3]
    assert seg.cu_q.tolist() == [0, 3, 5, 7, 9, 12] and seg.max_q == 3
    assert seg.q_index.tolist() == list(range(12))  # row 1's two padding tokens (12, 13) dropped
    cached = segments(AttentionMask(2, 7, causal=True, q_offset=5, key_padding=PAD_LEFT))
    assert cached.q_lens == [2, 2] and cached.k_lens == [7, 5]
    with pytest.raises(ValueError, match="non-decreasing"):
        segments(AttentionMask(3, 3, causal=True, documents=torch.tensor([[0, 1, 0]])))


@pytest.mark.parametrize("kind, position", [("CausalLM", "alibi"), ("CausalLM", "rope"), ("MaskedLM", "learned")])
def test_models_on_the_flash_attn_plugin_match_eager_with_packed_documents(flash, kind, position):
    options = dict(position=position, n_kv_heads=2, sliding_window=6)
    eager = build(kind, **options)
    plugged = same_weights(eager, kind, attention="flash_attn", **options)
    ids = torch.randint(2, VOCAB, (2, 12), generator=torch.Generator().manual_seed(0))
    docs = torch.tensor([[0] * 5 + [1] * 4 + [2] * 3, [0] * 8 + [1] * 4])
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1, -2:] = 0
    with torch.no_grad():
        expected = eager(ids, mask, document_ids=docs)
        out = plugged(ids, mask, document_ids=docs)
    real = mask.bool()
    torch.testing.assert_close(out[real], expected[real], atol=1e-5, rtol=1e-5)


def test_models_on_the_xformers_plugin_match_eager(xformers):
    for kind, options in (("CausalLM", dict(position="t5")), ("PrefixLM", dict(position="rope", n_kv_heads=2))):
        eager = build(kind, **options)
        plugged = same_weights(eager, kind, attention="xformers", **options)
        ids = torch.randint(2, VOCAB, (2, 10), generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            if kind == "PrefixLM":
                prefix = torch.tensor([3, 6])
                torch.testing.assert_close(plugged(ids, None, prefix), eager(ids, None, prefix), atol=1e-5, rtol=1e-5)
            else:
                docs = torch.tensor([[0] * 4 + [1] * 6, [0] * 10])
                torch.testing.assert_close(plugged(ids, document_ids=docs), eager(ids, document_ids=docs),
                                           atol=1e-5, rtol=1e-5)


def test_on_cpu_tensors_the_kernels_are_refused_at_run_time():
    from llm_modules_flash_attn import FlashAttention
    from llm_modules_xformers import XFormersAttention

    q = torch.randn(1, 2, 4, 8)
    for backend in (FlashAttention(), XFormersAttention()):
        with pytest.raises(RuntimeError, match=rf"attention '{backend.name}' runs on CUDA tensors.*'sdpa'"):
            backend(q, q, q, AttentionMask(4, 4, causal=True), None, 0.3)
