"""QLoRA (Dettmers et al., 2023): LoRA beside base weights stored as 4-bit NormalFloat (NF4).

The targeted layers' frozen weights are quantized by ``bitsandbytes`` (blockwise NF4, optionally
with the block scales quantized again: "double quantization") and dequantized on the fly in the
compute dtype; only the LoRA matrices are float and trainable. The layer keeps LoRA's parameter
names (``lora_a``/``lora_b``), so an adapter file trained with ``qlora`` loads onto the float base
as ``lora`` (``QLoRA.as_lora()``), which is how the result is merged and exported: merging into
4-bit weights would round the update away.

``bitsandbytes`` is imported inside ``inject`` only: it is an optional dependency, needs CUDA for
4-bit matmuls, and the rest of the package must import without it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from llm_modules.peft.base import extended_signature, option_names
from llm_modules.peft.lora import LoRA, LoRALinear
from llm_modules.registry import PEFT_METHODS, ConfigError

COMPUTE_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def require_bitsandbytes() -> Any:
    """The ``bitsandbytes`` module, or a ConfigError that says what is missing and what to do."""
    problems = []
    bnb = None
    try:
        import bitsandbytes as bnb
    except Exception as err:  # noqa: BLE001  (not installed, or a build that fails to load)
        problems.append(f"bitsandbytes cannot be imported ({type(err).__name__}: {err})")
    if not torch.cuda.is_available():
        problems.append("no CUDA GPU is available")
    if problems:
        raise ConfigError(
            "model.peft: qlora needs a CUDA GPU and the bitsandbytes package, but "
            + " and ".join(problems)
            + "; use peft 'lora' (same options, float base weights) or install bitsandbytes "
            "(pip install bitsandbytes) on a CUDA machine"
        )
    return bnb


class QLoRALinear(LoRALinear):
    """LoRA over an NF4 weight (``bitsandbytes.nn.Params4bit``); the base matmul runs in ``compute_dtype``."""

    merge_refusal = (
        "peft qlora cannot merge into 4-bit weights (the update would be rounded away); load the adapter "
        "onto the float base model with method QLoRA.as_lora() and merge there"
    )

    def __init__(self, base: nn.Linear, r: int, scale: float, dropout: float, init: str, *, quant: dict):
        import bitsandbytes as bnb  # checked by QLoRA.inject (require_bitsandbytes)

        super().__init__(base, r, scale, dropout, init)
        device = base.weight.device if base.weight.is_cuda else torch.device("cuda", torch.cuda.current_device())
        self.compute_dtype = quant["compute_dtype"]
        packed = bnb.nn.Params4bit(
            base.weight.data.to(self.compute_dtype), requires_grad=False, quant_type="nf4",
            blocksize=quant["blocksize"], compress_statistics=quant["double_quant"],
        ).to(device)  # quantization happens on the move to the GPU
        self.weight = packed
        # Kept on the module too: some wrappers (FSDP) rebuild the Parameter and drop its attributes.
        self.quant_state = packed.quant_state
        for name in ("lora_a", "lora_b", "bias"):
            param = getattr(self, name)
            if param is not None:
                param.data = param.data.to(device)

    def base_forward(self, x: torch.Tensor) -> torch.Tensor:
        import bitsandbytes as bnb  # a module object is not kept on the layer: deepcopy/pickle could not copy it

        state = getattr(self.weight, "quant_state", None) or self.quant_state
        bias = None if self.bias is None else self.bias.to(self.compute_dtype)
        out = bnb.matmul_4bit(x.to(self.compute_dtype), self.weight.t(), bias=bias, quant_state=state)
        return out.to(x.dtype)


@PEFT_METHODS.register("qlora")
class QLoRA(LoRA):
    """LoRA over 4-bit NF4 base weights (bitsandbytes, CUDA); needs a GPU, merges only as ``lora`` on the float base.

    LoRA's options, plus ``compute_dtype`` (bfloat16, float16, float32: the dtype of the
    dequantized matmul), ``double_quant`` (quantize the block scales too) and ``blocksize``.
    Merging and unloading are refused by the layers (``merge_refusal``), naming ``as_lora``.
    """

    layer_type = QLoRALinear

    def __init__(self, *, compute_dtype: str = "bfloat16", double_quant: bool = True, blocksize: int = 64,
                 **lora_options: Any):
        super().__init__(**lora_options)
        if compute_dtype not in COMPUTE_DTYPES:
            raise ConfigError(f"peft qlora compute_dtype must be one of {', '.join(COMPUTE_DTYPES)}; got {compute_dtype!r}")
        if blocksize not in (64, 128, 256, 512, 1024, 2048, 4096):
            raise ConfigError(f"peft qlora blocksize must be a power of two from 64 to 4096; got {blocksize!r}")
        self.compute_dtype, self.double_quant, self.blocksize = compute_dtype, bool(double_quant), blocksize

    # LoRA's options are written once (in LoRA); the registry's typo check and help see them all.
    __init__.__signature__ = extended_signature(LoRA.__init__, __init__)

    def inject(self, model: nn.Module) -> None:
        require_bitsandbytes()
        super().inject(model)

    def make_layer(self, linear: nn.Linear) -> LoRALinear:
        quant = {"compute_dtype": COMPUTE_DTYPES[self.compute_dtype], "double_quant": self.double_quant,
                 "blocksize": self.blocksize}
        return QLoRALinear(linear, self.r, self.scale, self.dropout, self.init, quant=quant)

    def as_lora(self) -> dict[str, Any]:
        """The ``lora`` spec with this method's LoRA options: its adapter files load onto the float base with it."""
        keep = option_names(LoRA)
        return {"name": "lora", **{k: getattr(self, k) for k in keep}}
