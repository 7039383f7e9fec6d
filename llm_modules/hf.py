"""Hugging Face folders as LightningModules: ``from_hf`` builds the LM kind that ``interop`` reads,
and ``to_hf`` writes one back.

This module sits above both ``models`` and ``interop``, so that interop never imports the models
it converts (it works on configs, kind names and state dicts).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from llm_modules.data.hf_tokenizer import folder_tokenizer_bytes
from llm_modules.empty_init import assign, parameters_on_meta
from llm_modules.interop import read_hf_model, to_hf
from llm_modules.interop import dtypes
import llm_modules.models as models

if TYPE_CHECKING:
    from llm_modules.models import InferenceLM, LanguageModel


def from_hf(path: str | Path, dtype: str | torch.dtype = "auto", trains: bool = True) -> LanguageModel | InferenceLM:
    """Load a Hugging Face checkpoint directory (config.json + safetensors, one file or the shards of
    ``model.safetensors.index.json``, or .bin) as the matching LightningModule (CausalLM, Seq2SeqLM,
    MaskedLM), in eval mode; ``trains=False``: as an ``InferenceLM`` of that kind, the same model
    without Lightning (for generation and conversion, which never train).

    ``dtype``: ``"auto"`` (default) keeps the weights in the dtype they are stored in, so a bf16
    checkpoint is a bf16 model of the file's size, as transformers 5 loads it; ``"float32"``,
    ``"bfloat16"``, ``"float16"`` cast the floating-point weights. (Fine-tuning from a folder,
    ``model.init_from``, is another path: the base weights are copied into the fp32 model that
    Lightning's precision plugins expect as master weights, and ``trainer.precision`` decides what
    computes in lower precision; ``convert from-hf --dtype`` and ``export --dtype`` choose for files.)

    The model is built with its parameters on the meta device and the checkpoint's tensors are
    assigned to it (``empty_init``): safetensors are memory-mapped, so loading holds one copy of the
    weights (the file's pages), not a model's worth of freshly initialised memory plus the file.

    The folder's tokenizer comes along (``tokenizer_bytes``), as ``model.init_from`` brings it."""
    target = dtypes.resolve(dtype)
    read = read_hf_model(path)
    state = dtypes.cast(read.state, target)
    with parameters_on_meta():
        module = models.KINDS[read.kind](read.config) if trains else models.InferenceLM(read.kind, read.config)
    assign(module.model, state, str(path))
    # The folder's tokenizer travels with the module (tokenizer.json with its config, chat template
    # and generation config, else tokenizer.model): generate stops where the model's own config says,
    # and to_hf writes the same files back.
    module.tokenizer_bytes = folder_tokenizer_bytes(path)
    module.eval()
    return module


__all__ = ["from_hf", "to_hf"]
