"""Pure-torch building blocks. Importing this package registers every built-in component.

Nothing here imports Lightning: these modules are usable for export and inference on their own.
"""

from llm_modules.nn import attention_backends, feedforward, moe, norms, positions, residual  # noqa: F401
from llm_modules.nn.lm import DecoderLM, EncoderDecoderLM, EncoderLM, aux_loss, count_parameters

__all__ = ["DecoderLM", "EncoderLM", "EncoderDecoderLM", "aux_loss", "count_parameters"]
