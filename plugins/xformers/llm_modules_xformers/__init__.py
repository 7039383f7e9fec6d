"""llm-modules plugin: the attention backend ``xformers`` (memory-efficient attention kernels).

Importing this module registers the name; it does not import xformers, which happens when a
model with ``attention: xformers`` is built, so the plugin loads on machines without CUDA.
"""

from llm_modules_xformers.backend import XFormersAttention

__all__ = ["XFormersAttention"]
