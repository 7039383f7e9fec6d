"""Post-training quantization of LanguageModels for CPU inference.

    from llm_modules.checkpoint import load_checkpoint, load_quantized, save_quantized
    from llm_modules.quantization import quantize
    module = quantize(load_checkpoint("last.ckpt"), "int4-weight", group_size=64)
    save_quantized(module, "last-int4.ckpt")          # or: llm-modules quantize last.ckpt last-int4.ckpt ...
    module = load_quantized("last-int4.ckpt")          # the same LanguageModel class: forward, generate

Methods (``METHODS``, a registry like the model component slots): ``dynamic-int8`` (integer matmul),
``int8-weight`` and ``int4-weight`` (weight-only). ``formats`` has the number formats in closed form,
``linear`` the layers, ``methods`` which layers are replaced, ``io`` the file; writing and reading a
quantized file rebuilds a LanguageModel, so those two are ``llm_modules.checkpoint``'s.
"""

from llm_modules.quantization.io import FORMAT_VERSION, is_quantized, linear_bytes
from llm_modules.quantization.methods import METHODS, Method, build_method, quantizable_linears, quantize

__all__ = [
    "FORMAT_VERSION",
    "METHODS",
    "Method",
    "build_method",
    "is_quantized",
    "linear_bytes",
    "quantizable_linears",
    "quantize",
]
