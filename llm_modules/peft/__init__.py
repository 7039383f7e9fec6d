"""Parameter-efficient fine-tuning methods (``peft`` option of a LanguageModel); see ``peft.base``.

Importing this package registers the built-in methods in ``registry.PEFT_METHODS``:
``lora``, ``qlora`` (needs CUDA + bitsandbytes at inject time only), ``adapter``, and the
soft-prompt family. Methods that wrap linear layers (LoRA, QLoRA) share ``peft.wrapped_linear``. ``peft.io`` saves and loads adapter-only files; ``adapters_disabled(model)``
runs the model as its base for a ``with`` block (the reference of alignment methods).
"""

from llm_modules.peft.adapter import BottleneckAdapter
from llm_modules.peft.base import (
    PeftMethod,
    adapters_disabled,
    applied_peft,
    apply_peft,
    build_peft,
    forget_peft,
    peft_state_dict,
)
from llm_modules.peft.io import load_adapter, read_adapter, save_adapter
from llm_modules.peft.lora import LoRA, LoRALinear
from llm_modules.peft.qlora import QLoRA
from llm_modules.peft.wrapped_linear import LinearWrappingMethod, WrappedLinear

# ---- soft-prompt methods (prompt, prefix, P-tuning) register below ------------------------------------------
import llm_modules.peft.prefix  # noqa: F401  (registers prefix)
import llm_modules.peft.prompt  # noqa: F401  (registers prompt, ptuning)

__all__ = [
    "BottleneckAdapter",
    "LinearWrappingMethod",
    "LoRA",
    "LoRALinear",
    "PeftMethod",
    "QLoRA",
    "WrappedLinear",
    "adapters_disabled",
    "applied_peft",
    "apply_peft",
    "build_peft",
    "forget_peft",
    "load_adapter",
    "peft_state_dict",
    "read_adapter",
    "save_adapter",
]
