"""``estimate.meta_cpu``: meta tensors that take the CPU's paths, which the activation trace runs on
instead of torch's fake tensors (whose import, with torch._dynamo, was most of ``llm-modules estimate``).

Each op here runs twice, on small real CPU tensors and on ``MetaCPU`` tensors of the same layout, and
what comes out (shapes, strides, dtypes, what autograd keeps) must agree: the CPU's own answers are
the reference. A fresh interpreter checks what ``estimate --preset llama-7b`` imports.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from llm_modules.estimate import meta_cpu
from llm_modules.estimate.meta_cpu import DataDependent, MetaCPU, as_meta_cpu, meta_as_cpu, refs_without_compiler


def _layout(x):
    if isinstance(x, torch.Tensor):
        return tuple(x.shape), x.stride(), x.dtype, x.device.type
    if isinstance(x, (tuple, list)):
        return [_layout(y) for y in x]
    return x


def _both(fn, *shapes, dtype=torch.float32, grad=False):
    """``fn`` on real CPU tensors and on MetaCPU ones of the same shapes."""
    torch.manual_seed(0)
    real = [torch.randn(s, dtype=dtype).requires_grad_(grad) for s in shapes]
    with refs_without_compiler(), meta_as_cpu():
        fake = [as_meta_cpu(t).requires_grad_(grad) for t in real]
        out = fn(*fake)
    return fn(*real), out


@pytest.mark.parametrize("name, fn, shapes, dtype", [
    # the CPU keeps layer norm's statistics in the input's dtype (meta's kernel: fp32, as a GPU)
    ("layer_norm_bf16", lambda x: torch.ops.aten.native_layer_norm(x, [8], None, None, 1e-5), [(2, 3, 8)],
     torch.bfloat16),
    ("layer_norm_fp32", lambda x: torch.ops.aten.native_layer_norm(x, [8], None, None, 1e-5), [(2, 3, 8)],
     torch.float32),
    ("matmul_transposed", lambda a, b: a @ b.transpose(0, 1), [(4, 8), (5, 8)], torch.float32),
    ("softmax", lambda x: x.softmax(-1), [(2, 7)], torch.bfloat16),
    ("cat_views", lambda x: torch.cat((x[..., 4:], x[..., :4]), -1), [(3, 8)], torch.float32),
    ("rms_norm", lambda x, w: torch.ops.aten._fused_rms_norm(x, [8], w, 1e-6), [(2, 8), (8,)], torch.float32),
])
def test_ops_answer_as_on_the_cpu(name, fn, shapes, dtype):
    real, fake = _both(fn, *shapes, dtype=dtype)
    assert _layout(fake) == _layout(real)


def test_autocast_casts_as_on_the_cpu_and_autograd_keeps_the_same_tensors():
    def step(x, w):
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(_layout(t)) or t, lambda t: t), \
                torch.autocast("cpu", dtype=torch.bfloat16):
            y = F.scaled_dot_product_attention(x @ w, x, x, is_causal=True)
        return y, saved, type(y.grad_fn).__name__

    (real_y, real_saved, real_fn), (y, saved, fn) = _both(step, (1, 2, 6, 8), (8, 8), grad=True)
    assert y.dtype == real_y.dtype == torch.bfloat16
    assert fn == real_fn  # the CPU's fused kernel, not meta's math fallback
    assert saved == real_saved


@pytest.mark.parametrize("case", ["causal", "bool_mask", "float_mask_with_grad", "transposed", "bf16_dropout"])
def test_sdpa_picks_the_cpu_kernel_the_cpu_picks(case):
    q = torch.randn(2, 4, 16, 8, dtype=torch.bfloat16 if case == "bf16_dropout" else torch.float32)
    k = q.transpose(-1, -2).contiguous().transpose(-1, -2) if case == "transposed" else q
    masks = {"bool_mask": torch.ones(16, 16, dtype=torch.bool).tril(),
             "float_mask_with_grad": torch.zeros(1, 4, 16, 16, requires_grad=True)}
    kwargs = {"attn_mask": masks[case]} if case in masks else {"is_causal": True}
    kwargs["dropout_p"] = 0.1 if case == "bf16_dropout" else 0.0
    real = torch._fused_sdp_choice(q, k, q, **kwargs)
    with refs_without_compiler(), meta_as_cpu():
        fake = torch._fused_sdp_choice(*(as_meta_cpu(t) for t in (q, k, q)),
                                       **{n: as_meta_cpu(v).requires_grad_(v.requires_grad)
                                          if isinstance(v, torch.Tensor) else v for n, v in kwargs.items()})
    assert fake == real


def test_views_share_a_storage_and_in_place_ops_return_their_input():
    with refs_without_compiler(), meta_as_cpu():
        x = torch.empty(4, 6)
        assert type(x) is MetaCPU and x.device.type == "cpu"
        view = x.t()[1:]
        assert meta_cpu.storage_key(view) == meta_cpu.storage_key(x) != meta_cpu.storage_key(torch.empty(4, 6))
        assert x.untyped_storage().nbytes() == 4 * 6 * 4
        assert x.add_(1) is x
        assert x[torch.tensor([0, 2])].shape == (2, 6)  # an index by integers has a known shape


@pytest.mark.parametrize("fn", [lambda x: x.sum().item(), lambda x: x.nonzero(), lambda x: x[x > 0],
                                lambda x: torch.bincount(x.long().flatten())])
def test_data_dependent_ops_say_so(fn):
    with refs_without_compiler(), meta_as_cpu():
        with pytest.raises(DataDependent):
            fn(torch.empty(3, 4))


def test_constants_keep_their_values():
    """A tensor made from values (``torch.tensor``) stays a real one, as fake tensors keep constants:
    reading it works; mixed with a trace tensor it becomes one."""
    with refs_without_compiler(), meta_as_cpu():
        limit = torch.tensor(3) + 1
        assert type(limit) is torch.Tensor and limit.item() == 4
        mixed = torch.empty(2, 2) * torch.tensor([1.0, 2.0])
        assert type(mixed) is MetaCPU and mixed.shape == (2, 2)


def test_torch_is_left_as_it_was():
    """The trace's shortcuts around torch._dynamo's and sympy's imports last only while it runs (and
    are not taken once dynamo is loaded: another test may have; the fresh interpreter below has not)."""
    check_with = torch._check_with
    with refs_without_compiler():
        patched = [fn for fn in meta_cpu._dynamo_disabled_refs() if fn.__dict__.get(meta_cpu._CACHE_NAME) is fn]
        if "torch._dynamo" not in sys.modules:
            assert torch._check_with is not check_with and patched
    assert torch._check_with is check_with
    assert not [fn for fn in patched if fn.__dict__.get(meta_cpu._CACHE_NAME) is fn]


CHILD = r"""
import atexit, gc, json, sys
# registered first, so it runs last at exit: after the command's own exit handler
atexit.register(lambda: print("FROZEN", gc.get_freeze_count() > 0, flush=True))
import torch
from llm_modules.cli import main
from llm_modules.estimate import meta_cpu
check_with = torch._check_with
code = main(["estimate", "--preset", "llama-7b", "--format", "json"])
left = [fn.__name__ for fn in meta_cpu._dynamo_disabled_refs() if fn.__dict__.get(meta_cpu._CACHE_NAME) is fn]
print("REPORT " + json.dumps({"code": code, "modules": [m for m in sys.argv[1:] if m in sys.modules],
                              "restored": torch._check_with is check_with and not left}), flush=True)
"""


def test_estimate_imports_no_compiler_and_skips_the_last_collection():
    """``estimate --preset llama-7b`` (the start-up target) imports neither torch._dynamo nor DTensor
    (each costs about half a second), and its process leaves its objects to the OS at exit."""
    heavy = ["torch._dynamo", "torch.distributed.tensor"]
    done = subprocess.run([sys.executable, "-c", CHILD, *heavy], capture_output=True, text=True, timeout=120)
    lines = [line for line in done.stdout.splitlines() if line.startswith("REPORT ")]
    assert lines, f"no report:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    report = json.loads(lines[-1][len("REPORT "):])
    assert report == {"code": 0, "modules": [], "restored": True}, done.stderr[-2000:]
    assert "FROZEN True" in done.stdout
