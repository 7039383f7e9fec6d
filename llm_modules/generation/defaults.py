"""Where a model's own generation defaults come from: the ids a row stops at, and its pad id.

A Hugging Face model keeps them in ``generation_config.json``, which may list several EOS ids
(Llama 3 instruct ends a turn with ``<|eot_id|>`` and a text with ``<|end_of_text|>``). That file
travels with the model's tokenizer (``HFTokenizer.generation``: imported with the folder, kept in
checkpoints, written back on export), so the defaults are, in order: the generation config's EOS
list, else the model config's ``eos_token_id``, else the tokenizer's EOS. Ids outside the model's
vocabulary are left out (a tokenizer from elsewhere may have more tokens than the model).
"""

from __future__ import annotations

from typing import Any


def generation_settings(module: Any, tokenizer: Any = None) -> dict[str, Any]:
    """The generation config (``generation_config.json``) that comes with ``tokenizer`` or the module's own, or {}."""
    for source in (tokenizer, getattr(module, "tokenizer", None)):
        settings = getattr(source, "generation", None)
        if isinstance(settings, dict):
            return settings
    return {}


def stop_ids(module: Any, tokenizer: Any = None) -> list[int]:
    """The ids that end a row by default (module docstring); [] when there are none."""
    config = getattr(module, "config", None)
    vocab = getattr(config, "vocab_size", None)
    listed = generation_settings(module, tokenizer).get("eos_token_id")
    if isinstance(listed, int) and not isinstance(listed, bool):
        listed = [listed]
    if isinstance(listed, list) and listed and all(isinstance(i, int) for i in listed):
        ids = listed
    elif getattr(config, "eos_token_id", None) is not None:
        ids = [config.eos_token_id]
    else:
        tokenizer = tokenizer if tokenizer is not None else getattr(module, "tokenizer", None)
        eos = getattr(tokenizer, "eos_id", -1) if tokenizer is not None else -1
        ids = [eos] if eos is not None else []
    return [i for i in ids if 0 <= i and (vocab is None or i < vocab)]


def pad_id(module: Any, tokenizer: Any = None) -> int | None:
    """The model config's ``pad_token_id``, else its generation config's, else None."""
    pad = getattr(getattr(module, "config", None), "pad_token_id", None)
    if pad is None:
        pad = generation_settings(module, tokenizer).get("pad_token_id")
        pad = pad if isinstance(pad, int) and not isinstance(pad, bool) else None
    return pad
