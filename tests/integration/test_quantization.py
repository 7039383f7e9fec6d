"""Quantization for CPU inference: the number formats in closed form, the layers against them, files
that load back to the same logits, sizes on disk, perplexity on a briefly trained model, and the CLI.

Perplexity tolerances (held-out bytes of a stdlib file, a tiny model trained for 60 steps; measured
changes over seeds 0-2 were within +-0.25% for the int8 methods and +-1.3% for int4):
- ``dynamic-int8`` and ``int8-weight``: relative perplexity change below 2%;
- ``int4-weight`` (group size 32): below 5%.
"""

from __future__ import annotations

import copy
import math
import os

import pytest
import torch
from torch import nn

from llm_modules import CausalLM, MaskedLM, ModelConfig, Seq2SeqLM
from llm_modules.checkpoint import load_checkpoint, load_quantized, save_checkpoint, save_quantized
from llm_modules.cli import main
from llm_modules.data.sources import stdlib_root
from llm_modules.quantization import (
    METHODS,
    linear_bytes,
    quantizable_linears,
    quantize,
)
from llm_modules.quantization import formats
from llm_modules.quantization.linear import DynamicInt8Linear, Int4WeightLinear, Int8WeightLinear
from llm_modules.registry import ConfigError

METHOD_OPTIONS = [("dynamic-int8", {}), ("int8-weight", {}), ("int4-weight", {"group_size": 32})]
TOLERANCE = {"dynamic-int8": 0.02, "int8-weight": 0.02, "int4-weight": 0.05}


def _bytes(name: str) -> torch.Tensor:
    return torch.tensor(list((stdlib_root() / name).read_bytes()), dtype=torch.long)


def _blocks(ids: torch.Tensor, length: int = 64) -> torch.Tensor:
    n = len(ids) // length
    return ids[: n * length].view(n, length)


@pytest.fixture(scope="module")
def trained():
    """A byte-level CausalLM trained for 60 steps on two stdlib files, and held-out blocks of a third.

    Odd widths (d_ff 171) exercise the int4 padding; untied head so it is quantized too.
    """
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=256, d_model=64, n_layers=2, n_heads=4, max_seq_len=64, position="rope",
                         norm="rmsnorm", activation="swiglu", tie_embeddings=False, bias=False)
    module = CausalLM(config)
    train = _blocks(torch.cat([_bytes("textwrap.py"), _bytes("shlex.py")]))
    optimizer = torch.optim.AdamW(module.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(60):
        batch = train[torch.randint(0, len(train), (16,), generator=generator)]
        loss = module.compute_loss({"input_ids": batch})["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return module.eval(), _blocks(_bytes("colorsys.py"))[:32]


@torch.no_grad()
def _perplexity(module, blocks) -> float:
    return math.exp(float(module.compute_loss({"input_ids": blocks})["lm_loss"]))


# ---- formats and layers in closed form ------------------------------------------------------------------


def test_int8_format_rounds_each_weight_to_the_nearest_level():
    torch.manual_seed(0)
    weight = torch.randn(24, 40)
    weight[3] = 0.0  # an all-zero row: scale must stay positive, the row exact
    q, scale = formats.quantize_int8(weight)
    assert q.dtype == torch.int8 and q.abs().max() <= 127 and bool((scale > 0).all())
    assert torch.allclose(scale[torch.arange(24) != 3], weight.abs().amax(1)[torch.arange(24) != 3] / 127)
    error = (q.float() * scale[:, None] - weight).abs()
    assert bool((error <= scale[:, None] / 2 + 1e-7).all())
    assert bool((q[3] == 0).all())


def test_int4_format_packs_two_per_byte_and_rounds_within_half_a_step():
    torch.manual_seed(0)
    weight = torch.randn(6, 50) * 0.1  # 50 inputs: padded to 64 for group size 32
    packed, scale, offset = formats.quantize_int4(weight, 32)
    assert packed.dtype == torch.uint8 and packed.shape == (6, 32)
    assert scale.dtype == offset.dtype == torch.float16 and scale.shape == (6, 2)
    values = torch.randint(0, 16, (3, 10), dtype=torch.uint8)
    assert torch.equal(formats.unpack_int4(formats.pack_int4(values)), values)
    assert int(formats.pack_int4(torch.tensor([[1, 2]]))[0, 0]) == 1 | 2 << 4  # even column: low nibble
    restored = formats.dequantize_int4(packed, scale, offset, 50)
    step = scale.float().repeat_interleave(32, dim=1)[:, :50]
    assert bool(((restored - weight).abs() <= step / 2 + 1e-3 * weight.abs().max()).all())


def _int4_reference(layer: Int4WeightLinear) -> torch.Tensor:
    """The int4 weight written out by hand: nibbles, then q * scale + offset per group."""
    low, high = layer.qweight & 0x0F, layer.qweight >> 4
    q = torch.empty(layer.out_features, layer.qweight.shape[1] * 2)
    q[:, 0::2], q[:, 1::2] = low.float(), high.float()
    g = layer.group_size
    w = q * layer.scale.float().repeat_interleave(g, 1) + layer.offset.float().repeat_interleave(g, 1)
    return w[:, : layer.in_features]


@pytest.mark.parametrize("in_features", [64, 71])
def test_weight_only_layers_equal_a_matmul_with_the_dequantized_weight(in_features):
    torch.manual_seed(0)
    linear = nn.Linear(in_features, 48)
    x = torch.randn(3, 5, in_features)
    int8 = Int8WeightLinear.from_linear(linear)
    expected = x @ (int8.qweight.float() * int8.scale[:, None]).T + linear.bias
    assert torch.allclose(int8(x), expected, atol=1e-5)
    int4 = Int4WeightLinear.from_linear(linear, group_size=32)
    expected = x @ _int4_reference(int4).T + linear.bias
    assert torch.allclose(int4(x), expected, atol=1e-5)
    assert torch.allclose(int4.dequantized_weight(), _int4_reference(int4))


def test_dynamic_int8_is_the_int8_weight_matmul_up_to_activation_rounding():
    """Activations are rounded to 7-bit levels of the tensor's range: the error stays within 2% of the output."""
    torch.manual_seed(0)
    linear = nn.Linear(64, 32)
    x = torch.randn(4, 64)
    layer = DynamicInt8Linear.from_linear(linear)
    reference = x @ layer.dequantized_weight().T + linear.bias
    assert (layer(x) - reference).abs().max() < 0.02 * reference.abs().max()


# ---- models, files and sizes --------------------------------------------------------------------------------


@pytest.mark.parametrize("method,options", METHOD_OPTIONS)
def test_saved_file_loads_to_the_same_logits_and_generations(trained, tmp_path, method, options):
    module, blocks = trained
    quantized = quantize(copy.deepcopy(module), method, **options)
    path = save_quantized(quantized, tmp_path / f"{method}.ckpt")
    raw = torch.load(path, weights_only=True)  # plain data and tensors only
    assert raw["quantization"]["method"] == method and raw["quantization"]["options"] == options
    loaded = load_quantized(path)
    assert type(loaded) is CausalLM and loaded.quantization == quantized.quantization
    general = load_checkpoint(path)  # the one loader for every checkpoint reads it quantized too
    assert general.quantization == quantized.quantization
    with torch.no_grad():
        assert torch.equal(loaded(blocks[:2]), quantized(blocks[:2]))
        assert torch.equal(general(blocks[:2]), quantized(blocks[:2]))
    prompt = blocks[:1, :8]
    assert torch.equal(loaded.generate(prompt, max_new_tokens=6, eos_token_id=[]),
                       quantized.generate(prompt, max_new_tokens=6, eos_token_id=[]))


@pytest.mark.parametrize("method,options", METHOD_OPTIONS)
def test_perplexity_stays_within_the_stated_tolerance(trained, method, options):
    module, blocks = trained
    before = _perplexity(module, blocks)
    after = _perplexity(quantize(copy.deepcopy(module), method, **options), blocks)
    assert abs(after / before - 1) < TOLERANCE[method], (method, before, after)


def test_sizes_on_disk_shrink_as_the_formats_say(trained, tmp_path):
    module, _ = trained
    float_size = os.path.getsize(save_checkpoint(module, tmp_path / "float.ckpt"))
    shapes = [(m.out_features, m.in_features) for n, m in module.model.named_modules()
              if n in quantizable_linears(module.model)]
    # int8: a byte per weight + a float32 scale per output row. int4 (group 64): half a byte per
    # weight + a float16 scale and offset per 64 inputs, inputs padded to whole groups (d_ff 171 -> 192).
    expected = {
        "int8-weight": sum(n * k + 4 * n for n, k in shapes),
        "int4-weight": sum(n * (-(-k // 64) * 64) // 2 + 4 * n * -(-k // 64) for n, k in shapes),
    }
    expected["dynamic-int8"] = expected["int8-weight"]
    sizes = {}
    for method, options in [("int8-weight", {}), ("dynamic-int8", {}), ("int4-weight", {"group_size": 64})]:
        quantized = quantize(copy.deepcopy(module), method, **options)
        sizes[method] = os.path.getsize(save_quantized(quantized, tmp_path / f"{method}.ckpt"))
        assert linear_bytes(quantized) == (expected[method], sum(4 * n * k for n, k in shapes)), method
    assert expected["int4-weight"] < 0.16 * sum(4 * n * k for n, k in shapes)
    assert sizes["int4-weight"] < sizes["int8-weight"] == sizes["dynamic-int8"] < 0.6 * float_size


def test_which_layers_are_quantized():
    """Every linear layer except a head tied to the embedding (and MoE routers); embeddings stay float."""
    torch.manual_seed(0)
    tied = CausalLM(ModelConfig(vocab_size=64, d_model=32, n_layers=1, n_heads=4, max_seq_len=16))
    names = quantizable_linears(tied.model)
    assert "head.proj" not in names and "stack.layers.0.attn.q" in names
    quantize(tied, "int8-weight")
    assert isinstance(tied.model.embed.tokens, nn.Embedding) and tied.model.head.proj.weight is tied.model.embed.tokens.weight


@pytest.mark.parametrize("kind,extra", [(Seq2SeqLM, {}), (MaskedLM, {"head_transform": True})])
def test_other_lm_kinds_round_trip(tmp_path, kind, extra):
    torch.manual_seed(0)
    module = kind(ModelConfig(vocab_size=64, d_model=32, n_layers=1, n_heads=4, max_seq_len=16, tie_embeddings=False,
                              **extra)).eval()
    quantize(module, "int4-weight", group_size=32)
    loaded = load_quantized(save_quantized(module, tmp_path / "q.ckpt"))
    ids = torch.randint(1, 64, (2, 10))
    inputs = {"decoder_input_ids": ids[:, :5]} if kind is Seq2SeqLM else {}
    with torch.no_grad():
        assert torch.equal(loaded(ids, **inputs), module(ids, **inputs))


def test_misuse_is_a_config_error(trained, tmp_path):
    module, _ = trained
    with pytest.raises(ConfigError, match=r"unknown quantization method 'int9-weight' \(did you mean 'int8-weight'\?\)"):
        quantize(copy.deepcopy(module), "int9-weight")
    with pytest.raises(ConfigError, match="has no option 'group_size'"):
        quantize(copy.deepcopy(module), "int8-weight", group_size=32)
    with pytest.raises(ConfigError, match="group_size=33 must be a positive even number"):
        quantize(copy.deepcopy(module), "int4-weight", group_size=33)
    quantized = quantize(copy.deepcopy(module), "int8-weight")
    with pytest.raises(ConfigError, match="already quantized"):
        quantize(quantized, "int4-weight")
    with pytest.raises(ConfigError, match="is not quantized"):
        load_quantized(save_checkpoint(module, tmp_path / "float.ckpt"))
    assert {"dynamic-int8", "int8-weight", "int4-weight"} <= set(METHODS.names())


# ---- the command line ----------------------------------------------------------------------------------------


def test_cli_quantizes_a_checkpoint(trained, tmp_path, capsys):
    module, blocks = trained
    ckpt = save_checkpoint(module, tmp_path / "float.ckpt")
    out = tmp_path / "q" / "int4.ckpt"
    assert main(["quantize", str(ckpt), str(out), "--method", "int4-weight", "--group-size", "32"]) == 0
    printed = capsys.readouterr().out
    assert "int4-weight, group_size 32" in printed and "file:" in printed and "linear weights:" in printed
    loaded = load_quantized(out)
    expected = quantize(copy.deepcopy(module), "int4-weight", group_size=32)
    with torch.no_grad():
        assert torch.equal(loaded(blocks[:2]), expected(blocks[:2]))


def test_cli_refuses_bad_input_and_leaves_files_alone(trained, tmp_path, capsys):
    module, _ = trained
    ckpt = save_checkpoint(module, tmp_path / "float.ckpt")
    existing = tmp_path / "existing.ckpt"
    existing.write_bytes(b"keep me")
    quantized = save_quantized(quantize(copy.deepcopy(module), "int8-weight"), tmp_path / "q8.ckpt")
    before = {p: p.read_bytes() for p in (ckpt, existing, quantized)}
    over = [str(existing), "--overwrite"]  # bad input fails before the output, even one allowed to be replaced
    cases = [
        ([str(ckpt), *over, "--method", "int9-weight"], "did you mean 'int8-weight'"),
        ([str(ckpt), str(ckpt), "--method", "int8-weight"], "is CKPT itself"),
        ([str(tmp_path / "missing.ckpt"), *over, "--method", "int8-weight"], "does not exist"),
        ([str(quantized), *over, "--method", "int4-weight"], "already quantized (int8-weight)"),
        ([str(ckpt), *over, "--method", "int8-weight", "--group-size", "32"], "no option 'group_size'"),
        ([str(ckpt), str(tmp_path), "--method", "int8-weight"], "is a folder"),
        ([str(ckpt), str(existing), "--method", "int8-weight"], "already exists; pass --overwrite"),
        ([str(existing), str(tmp_path / "new.ckpt"), "--method", "int8-weight"], "cannot be read"),
    ]
    for argv, message in cases:
        assert main(["quantize", *argv]) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("llm-modules quantize: error:") and message in err, err
    assert {p: p.read_bytes() for p in (ckpt, existing, quantized)} == before
    assert not (tmp_path / "new.ckpt").exists()
