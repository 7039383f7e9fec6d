"""Where a model's own generation defaults come from: the ids a row stops at, its pad id, and how
``llm-modules generate`` decodes when no flag says otherwise.

A Hugging Face model keeps them in ``generation_config.json``, which may list several EOS ids
(Llama 3 instruct ends a turn with ``<|eot_id|>`` and a text with ``<|end_of_text|>``) and may ask
for sampling. That file travels with the model's tokenizer (``HFTokenizer.generation``: imported
with the folder, kept in checkpoints, written back on export), and a model loaded from a folder for
generation keeps the folder's own (``FOLDER_SETTINGS``, whatever its tokenizer file). Stop ids are,
in order: the generation config's EOS list, else the model config's ``eos_token_id``, else the
tokenizer's EOS; ids outside the model's vocabulary are left out (a tokenizer from elsewhere may
have more tokens than the model). Stop ids and pad id are ``generate``'s defaults everywhere; the
sampling settings (``decoding``) are where ``llm-modules generate`` starts, while the Python
``generate`` keeps its explicit keyword defaults (``lm.generate(ids, **decoding(lm))`` takes the model's).
"""

from __future__ import annotations

from typing import Any


#: the attribute of a module loaded from a Hugging Face folder that holds the folder's generation_config.json
FOLDER_SETTINGS = "hf_generation_config"


def generation_settings(module: Any, tokenizer: Any = None) -> dict[str, Any]:
    """The model's generation config (``generation_config.json``), or {}: the one read from the folder
    the module was loaded from (``FOLDER_SETTINGS``), else the one its own tokenizer carries, else the
    one of ``tokenizer`` (given from elsewhere)."""
    own = getattr(module, "tokenizer", None)
    for settings in (getattr(module, FOLDER_SETTINGS, None), getattr(own, "generation", None),
                     getattr(tokenizer, "generation", None)):
        if isinstance(settings, dict):
            return settings
    return {}


def read_folder_settings(folder) -> dict[str, Any] | None:
    """A Hugging Face folder's ``generation_config.json`` (None when it has none or it is not a JSON object)."""
    import json
    from pathlib import Path

    path = Path(folder) / "generation_config.json"
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return settings if isinstance(settings, dict) else None


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


#: transformers' own value for a sampling generation config that names no top_k
HF_TOP_K = 50


def decoding(module: Any, tokenizer: Any = None) -> dict[str, Any]:
    """The decoding options the model's generation config sets, as ``generate`` keyword arguments:
    ``max_new_tokens`` and ``repetition_penalty`` when given, and with ``do_sample: true`` sampling
    with its ``temperature`` / ``top_k`` / ``top_p`` (``top_k`` 50 when unnamed, as transformers'
    ``generate`` samples). What ``llm-modules generate`` starts from, under the flags given; {} for a
    model without one. Values that are not numbers of the right kind are left out (the option's own
    default applies)."""
    settings = generation_settings(module, tokenizer)
    found: dict[str, Any] = {}
    if _is_int(settings.get("max_new_tokens")):
        found["max_new_tokens"] = settings["max_new_tokens"]
    if _is_number(settings.get("repetition_penalty")):
        found["repetition_penalty"] = float(settings["repetition_penalty"])
    if settings.get("do_sample") is True and settings.get("num_beams") in (None, 1):
        found["do_sample"] = True
        if _is_number(settings.get("temperature")):
            found["temperature"] = float(settings["temperature"])
        found["top_k"] = settings["top_k"] if _is_int(settings.get("top_k")) else HF_TOP_K
        if found["top_k"] == 0:  # transformers: 0 turns top-k filtering off
            found["top_k"] = None
        if _is_number(settings.get("top_p")) and settings["top_p"] < 1.0:
            found["top_p"] = float(settings["top_p"])
    return found


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
