"""Text generation: greedy, sampling and beam search for decoders and encoder-decoders; mask filling
for encoder-only models.

``generate`` checks the options (``GenerationConfig``), fills in the model's defaults, opens a
decoding session (``session.py``: the model with its KV cache) and runs the chosen search
(``search.py``, ``beam.py``) on it. Options and their meaning follow Hugging Face's ``generate``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from llm_modules.generation import defaults
from llm_modules.generation.config import GenerationConfig
from llm_modules.generation.fill import MaskPredictions, fill_mask
from llm_modules.generation.inference import evaluating
from llm_modules.generation.search import decode
from llm_modules.generation.session import open_session
from llm_modules.registry import ConfigError


def generate(
    module: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    max_new_tokens: int = 32,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    repetition_penalty: float = 1.0,
    num_beams: int = 1,
    length_penalty: float = 1.0,
    early_stopping: bool | str = False,
    eos_token_id: int | list[int] | None = None,
    pad_token_id: int | None = None,
    stop_strings: str | list[str] | None = None,
    tokenizer=None,
    generator: torch.Generator | None = None,
    seed: int | None = None,
    streamer: Callable[[torch.Tensor], None] | None = None,
    use_cache: bool = True,
    prefix_lengths: torch.Tensor | None = None,
) -> torch.Tensor:
    """Continue each prompt row of ``input_ids`` (B, P); returns (B, P' + n) token ids.

    ``module``: a CausalLM, PrefixLM or Seq2SeqLM (or its torch model). Decoder prompts are
    left-padded (``attention_mask`` 0 on the left) and returned as given, followed by the new tokens;
    a Seq2SeqLM reads the prompt with its encoder and returns the decoder's rows, which start with
    the decoder start token (``config.pad_token_id``, T5's convention). n <= ``max_new_tokens``, fewer
    only when every row stopped early; rows that stopped are padded with ``pad_token_id``.

    Defaults (``generation.defaults``): ``eos_token_id`` is the model's generation config's (a list
    for Llama 3), else its config's, else its tokenizer's, else none (``[]`` turns stopping on EOS
    off); ``pad_token_id`` is the model config's, else its generation config's; ``tokenizer`` (needed by
    ``stop_strings``) is the one the checkpoint carries.
    Sampling (``do_sample=True``) draws from ``generator``, or a fresh one seeded with ``seed``
    (from OS entropy without one): never from torch's global generator.
    ``streamer`` is called with each step's tokens (B,) as they are chosen (not with beam search).
    """
    config = getattr(module, "config", None)
    if eos_token_id is None:
        eos_token_id = defaults.stop_ids(module)
    if stop_strings and tokenizer is None:
        tokenizer = getattr(module, "tokenizer", None)
    if pad_token_id is None:
        pad_token_id = defaults.pad_id(module)
    options = GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p,
        repetition_penalty=repetition_penalty, num_beams=num_beams, length_penalty=length_penalty,
        early_stopping=early_stopping, eos_token_id=eos_token_id, pad_token_id=pad_token_id,
        stop_strings=stop_strings, seed=seed,
    )
    _check_ids(options, getattr(config, "vocab_size", None))
    with evaluating(module):
        session = open_session(module, input_ids, attention_mask, use_cache=use_cache,
                               prefix_lengths=prefix_lengths, max_new_tokens=max_new_tokens)
        return decode(session, options, tokenizer=tokenizer, generator=generator, streamer=streamer)


def _check_ids(options: GenerationConfig, vocab_size: int | None) -> None:
    """Stop and pad ids must be tokens of the model's vocabulary."""
    if vocab_size is None:
        return
    for name, ids in (("eos_token_id", options.eos_ids), ("pad_token_id", (options.pad_token_id,))):
        for token in ids:
            if token is not None and token >= vocab_size:
                raise ConfigError(f"{name}={token} is not a token id of this model (vocab_size={vocab_size})")


__all__ = ["GenerationConfig", "MaskPredictions", "fill_mask", "generate"]
