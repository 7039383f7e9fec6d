"""The model's linear layer (``nn.linear``): oneDNN's fp32 CPU product against ``F.linear``.

Values and gradients equal ``F.linear``'s up to float rounding; the path is taken where it should be
(and only there); it keeps for the backward what ``F.linear``'s autograd keeps; the modules are
``nn.Linear`` to every other part of the code (state dict, isinstance, LoRA unload).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from llm_modules import CausalLM, ModelConfig
from llm_modules.nn import linear as linear_layer
from llm_modules.nn.linear import Linear, linear, onednn_serves

ROOT = Path(__file__).resolve().parents[2]
needs_onednn = pytest.mark.skipif(not linear_layer._ONEDNN, reason="oneDNN's linear is not available on this CPU")

# 512 rows x 128 in x 1024 out: 2^26 multiply-adds, the smallest product that takes oneDNN
ROWS, IN, OUT = 512, 128, 1024
assert ROWS * IN * OUT == linear_layer.MIN_MACS


def tensors(bias: bool, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(4, ROWS // 4, IN, generator=generator)
    weight = torch.randn(OUT, IN, generator=generator) / IN**0.5
    b = torch.randn(OUT, generator=generator) if bias else None
    return x, weight, b


def outputs_and_grads(fn, x, weight, bias, wanted):
    """fn(x, weight, bias) and the gradients of a fixed cotangent w.r.t. the tensors named in ``wanted``."""
    leaves = {"x": x, "weight": weight, "bias": bias}
    inputs = {name: t.detach().clone().requires_grad_(name in wanted) if t is not None else None
              for name, t in leaves.items()}
    out = fn(inputs["x"], inputs["weight"], inputs["bias"])
    cotangent = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    grads = torch.autograd.grad(out, [inputs[name] for name in wanted], cotangent) if wanted else ()
    return out, dict(zip(wanted, grads)), out.grad_fn


@needs_onednn
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("wanted", [("x", "weight"), ("x",), ("weight",), ()])
def test_onednn_product_and_gradients_match_f_linear(bias, wanted):
    x, weight, b = tensors(bias)
    wanted = (*wanted, "bias") if bias and wanted else wanted
    out, grads, grad_fn = outputs_and_grads(linear, x, weight, b, wanted)
    ref_out, ref_grads, _ = outputs_and_grads(F.linear, x, weight, b, wanted)
    assert (grad_fn is None) == (not wanted)
    if wanted:
        assert grad_fn.name() == "ViewBackward0" and grad_fn.next_functions[0][0].name() == "_OneDNNLinearBackward"
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
    assert grads.keys() == ref_grads.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-5, atol=1e-4, msg=name)


@needs_onednn
def test_strided_input_and_gradient():
    """A transposed input (the attention output before the out-projection) and a strided gradient."""
    x, weight, _ = tensors(False)
    strided = x.transpose(0, 1).detach().requires_grad_()
    weight.requires_grad_()
    assert not strided.is_contiguous() and onednn_serves(strided, weight)
    cotangent = torch.randn(OUT, ROWS // 4 * 4).t().reshape(ROWS // 4, 4, OUT)
    assert not cotangent.is_contiguous()
    ours = torch.autograd.grad(linear(strided, weight), (strided, weight), cotangent)
    ref = torch.autograd.grad(F.linear(strided, weight), (strided, weight), cotangent)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)


def saved_bytes(fn) -> int:
    """Bytes of the distinct storages autograd keeps for ``fn()``'s backward."""
    kept: dict[int, int] = {}

    def pack(t):
        kept[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(kept.values())


@needs_onednn
@pytest.mark.parametrize("wanted", [("x", "weight"), ("x",), ("weight",)])
def test_keeps_what_f_linears_autograd_keeps(wanted):
    """The input only when the weight trains (a frozen LoRA base keeps no input), the weight only
    when the input needs its gradient: the memory estimator's count holds for either path."""
    x, weight, _ = tensors(False)
    x.requires_grad_("x" in wanted)
    weight.requires_grad_("weight" in wanted)
    assert saved_bytes(lambda: linear(x, weight)) == saved_bytes(lambda: F.linear(x, weight))


@pytest.mark.filterwarnings("ignore:TF32 acceleration")
@pytest.mark.parametrize("case", ["small", "float64", "bfloat16", "autocast", "onednn off", "subclass", "compiling"])
def test_everything_else_takes_f_linear(case, monkeypatch):
    x, weight, bias = tensors(True)
    if case == "small":
        x = x[:, :1]
    elif case in ("float64", "bfloat16"):
        dtype = getattr(torch, case)
        x, weight, bias = x.to(dtype), weight.to(dtype), bias.to(dtype)
    elif case == "subclass":

        class Sub(torch.Tensor):
            pass

        x = x.as_subclass(Sub)
    elif case == "compiling":
        monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    weight.requires_grad_()
    context = {"autocast": torch.autocast("cpu", dtype=torch.bfloat16),
               "onednn off": torch.backends.mkldnn.flags(enabled=False)}.get(case)
    with context or torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t):
        assert not onednn_serves(x, weight, bias)
        out = linear(x, weight, bias)
        ref = F.linear(x, weight, bias)
    assert "OneDNN" not in out.grad_fn.name() and out.dtype == ref.dtype
    assert torch.equal(out, ref)


def test_the_layer_is_an_nn_linear_with_its_state_dict():
    layer = Linear(IN, OUT)
    assert isinstance(layer, nn.Linear) and list(layer.state_dict()) == ["weight", "bias"]
    lm = CausalLM(ModelConfig(vocab_size=64, d_model=32, n_layers=1, n_heads=4, d_ff=64, max_seq_len=8))
    assert all(type(m) is Linear for m in lm.modules() if isinstance(m, nn.Linear))


def test_linear_benchmark_smoke(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import linear as benchmark
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    out = tmp_path / "linear.json"
    threads = torch.get_num_threads()  # put back: a later fork in this worker must not inherit a grown pool
    try:
        assert benchmark.main(["--shape", "64x64x64", "--shape", f"{ROWS}x{IN}x{OUT}", "--rounds", "1",
                               "--threads", "1", "--json", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    small, large = json.loads(out.read_text())["results"]
    assert not small["onednn"] and large["onednn"] == linear_layer._ONEDNN
    for result in (small, large):
        assert all(result[part]["speedup"] > 0 for part in ("forward", "input_grad", "forward_backward"))
