"""Quantized replacements for ``nn.Linear``, for CPU inference.

Each holds its integers and scales as buffers (so ``state_dict`` is plain tensors that
``torch.load(weights_only=True)`` reads) and keeps the float bias. ``from_linear`` quantizes a
trained layer; the constructor alone makes an empty layer of the right shapes for loading a file.

- ``Int8WeightLinear`` / ``Int4WeightLinear``: weight-only. The forward dequantizes the weight and
  runs a float matmul, so activations keep full precision: the error is the weight rounding alone.
  What shrinks is the model on disk and at rest in memory (one layer's float weight exists at a
  time, during its call); the speed is the float matmul's plus the dequantization, so slower than
  float32. (torch's fused CPU kernels, ``aten._weight_int8pack_mm`` / ``_weight_int4pack_mm_for_cpu``,
  are private and, on torch 2.13, fast only with bfloat16 activations, which would add their own
  rounding; with float32 activations they were no faster than this.)
- ``DynamicInt8Linear``: weights int8 per channel, activations quantized to 8 bits per call (one
  scale per tensor, from its range), and an int8 x int8 -> int32 matmul in torch's quantized CPU
  engine (fbgemm / oneDNN): what ``torch.ao.quantization.quantize_dynamic`` builds, with per-channel
  weights (its ``per_channel_dynamic_qconfig``).
"""

from __future__ import annotations

import abc
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from llm_modules.quantization import formats
from llm_modules.registry import ConfigError


class _QuantizedLinear(nn.Module, abc.ABC):
    """Shape bookkeeping shared by the quantized layers (what ``nn.Linear`` reports)."""

    def __init__(self, in_features: int, out_features: int, bias: bool):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.bias = nn.Parameter(torch.zeros(out_features), requires_grad=False) if bias else None

    def _copy_bias(self, linear: nn.Linear) -> None:
        if self.bias is not None:
            self.bias.data.copy_(linear.bias.detach().float())

    @abc.abstractmethod
    def dequantized_weight(self) -> torch.Tensor:
        """The float (out_features, in_features) weight this layer computes with."""

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Int8WeightLinear(_QuantizedLinear):
    """Weight-only int8, one scale per output channel; float activations."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__(in_features, out_features, bias)
        self.register_buffer("qweight", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("scale", torch.ones(out_features))

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8WeightLinear:
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None)
        layer.qweight, layer.scale = formats.quantize_int8(linear.weight)
        layer._copy_bias(linear)
        return layer

    def dequantized_weight(self) -> torch.Tensor:
        return formats.dequantize_int8(self.qweight, self.scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (x @ q^T) * scale: the per-channel scale applies to output columns, so the weight is only
        # cast, not also multiplied, on every call.
        y = F.linear(x, self.qweight.to(x.dtype)) * self.scale.to(x.dtype)
        return y if self.bias is None else y + self.bias.to(x.dtype)


class Int4WeightLinear(_QuantizedLinear):
    """Weight-only int4, two values per byte, float16 scale and offset per group of inputs."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, group_size: int = 64):
        super().__init__(in_features, out_features, bias)
        self.group_size = group_size
        padded = formats.padded_width(in_features, group_size)
        self.register_buffer("qweight", torch.zeros(out_features, padded // 2, dtype=torch.uint8))
        self.register_buffer("scale", torch.ones(out_features, padded // group_size, dtype=torch.float16))
        self.register_buffer("offset", torch.zeros(out_features, padded // group_size, dtype=torch.float16))

    @classmethod
    def from_linear(cls, linear: nn.Linear, group_size: int = 64) -> Int4WeightLinear:
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, group_size)
        layer.qweight, layer.scale, layer.offset = formats.quantize_int4(linear.weight, group_size)
        layer._copy_bias(linear)
        return layer

    def dequantized_weight(self) -> torch.Tensor:
        return formats.dequantize_int4(self.qweight, self.scale, self.offset, self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = formats.dequantize_int4(self.qweight, self.scale, self.offset, dtype=x.dtype)
        if weight.shape[1] != self.in_features:  # padded inputs: pad x with zeros (cheaper than slicing W)
            x = F.pad(x, (0, weight.shape[1] - self.in_features))
        return F.linear(x, weight, None if self.bias is None else self.bias.to(x.dtype))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, group_size={self.group_size}"


def _quantized_engine_ops():
    """torch's dynamic quantized linear ops, or a ConfigError naming the alternative."""
    ops = getattr(torch.ops, "quantized", None)
    try:
        return ops.linear_prepack, ops.linear_dynamic
    except (AttributeError, RuntimeError) as err:
        raise ConfigError(
            "quantization method 'dynamic-int8' needs torch's quantized CPU engine "
            "(torch.ops.quantized.linear_dynamic), which this torch build lacks; use 'int8-weight'"
        ) from err


class DynamicInt8Linear(_QuantizedLinear):
    """int8 weights (per channel) x activations quantized to 8 bits on the fly: an integer matmul.

    The file holds the same int8 weights and scales as ``Int8WeightLinear``; the engine's packed
    form is rebuilt from them on load (it is an opaque object that a weights-only file cannot hold).
    Activations use 7 of the 8 bits (``reduce_range``), as torch's x86 default does: fbgemm's
    int8 instructions would saturate on a full range.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__(in_features, out_features, bias)
        self.register_buffer("qweight", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("scale", torch.ones(out_features))
        self._packed = None
        # load_state_dict copies into the buffers in place: the packed copy is stale after it.
        self.register_load_state_dict_post_hook(_drop_packed)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> DynamicInt8Linear:
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None)
        layer.qweight, layer.scale = formats.quantize_int8(linear.weight)
        layer._copy_bias(linear)
        layer.packed()  # fail now, not at the first forward, when the engine is missing
        return layer

    def dequantized_weight(self) -> torch.Tensor:
        return formats.dequantize_int8(self.qweight, self.scale)

    def packed(self):
        """The engine's prepacked weight (built once; rebuilt after ``load_state_dict``)."""
        if self._packed is None:
            prepack, _ = _quantized_engine_ops()
            zero_points = torch.zeros(self.out_features, dtype=torch.long)
            with warnings.catch_warnings():
                # torch marks quantized-dtype tensors as deprecated in favour of torchao; the
                # engine's dynamic linear still takes them, and nothing else is exposed to users.
                warnings.filterwarnings("ignore", message=".*quantized tensor creation.*deprecated")
                weight = torch._make_per_channel_quantized_tensor(
                    self.qweight.cpu(), self.scale.double().cpu(), zero_points, 0
                )
            bias = None if self.bias is None else self.bias.detach().float().cpu()
            self._packed = prepack(weight, bias)
        return self._packed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu":
            raise ConfigError("quantization method 'dynamic-int8' runs on CPU only; move the model and inputs "
                              "to the CPU, or use 'int8-weight' on other devices")
        _, linear_dynamic = _quantized_engine_ops()
        return linear_dynamic(x.float().contiguous(), self.packed(), True).to(x.dtype)


def _drop_packed(module: DynamicInt8Linear, incompatible_keys) -> None:
    module._packed = None


LINEAR_TYPES = (Int8WeightLinear, Int4WeightLinear, DynamicInt8Linear)
