"""llm-modules plugin: the attention backend ``flash_attn`` (FlashAttention-2 kernels).

Importing this module registers the name; it does not import flash_attn, which happens when a
model with ``attention: flash_attn`` is built, so the plugin loads on machines without CUDA.
"""

from llm_modules_flash_attn.backend import FlashAttention

__all__ = ["FlashAttention"]
