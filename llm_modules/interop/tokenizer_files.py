"""The tokenizer a model carries, and its special token ids, as the files of a Hugging Face folder.

A model fine-tuned from a Hugging Face folder carries that folder's tokenizer (``HFTokenizer``:
``tokenizer.json``, ``tokenizer_config.json`` with its ``chat_template``, ``generation_config.json``);
export writes the first two back as they were read, and generation_config.json with the imported
settings (its EOS list) over the ids config.json names, so transformers' AutoTokenizer and
GenerationConfig load what the original folder held.

A model trained here keeps its SentencePiece tokenizer in its checkpoints (``tokenizer_bytes``). An
exported folder holds it as ``tokenizer.model`` (what ``llm-modules generate`` reads) with a
``tokenizer_config.json`` that makes ``transformers.AutoTokenizer.from_pretrained(folder)`` build
the same tokenizer (its generic SentencePiece converter: ``PreTrainedTokenizerFast``) with the same
special tokens, and the same ids for text: ``split_special_tokens`` keeps text such as ``"<s>"``
plain characters, as our tokenizer's control symbols do.

Special token ids go to config.json and generation_config.json. EOS is the model's, else its
tokenizer's: generation on the folder then stops where generation on the checkpoint does. BOS only
when the model has one (imported models such as LLaMA): ``llm-modules generate`` puts BOS before a
prompt when config.json names one, and a model trained here never saw BOS at the start of a text,
so its tokenizer's BOS would change what the exported model is prompted with.
"""

from __future__ import annotations

import json
from typing import Any

#: config.json keys that generation_config.json repeats (transformers reads generation defaults there)
GENERATION_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id")


def special_token_ids(module) -> dict[str, int]:
    """``bos_token_id`` / ``eos_token_id`` for config.json (see the module docstring); absent ones left out."""
    config, tokenizer = module.config, module.tokenizer
    found = {}
    if config.bos_token_id is not None:
        found["bos_token_id"] = config.bos_token_id
    eos = config.eos_token_id
    if eos is None and tokenizer is not None and 0 <= tokenizer.eos_id < config.vocab_size:
        eos = tokenizer.eos_id
    if eos is not None:
        found["eos_token_id"] = eos
    return found


def generation_config(hf_config: dict[str, Any], module=None) -> dict[str, Any]:
    """generation_config.json of a folder whose config.json is ``hf_config``: its special token ids,
    under the generation config the model imported with its tokenizer (``HFTokenizer.generation``),
    which wins where both say something: its EOS list (Llama 3) is what generation stops at."""
    found = {k: hf_config[k] for k in GENERATION_KEYS if hf_config.get(k) is not None}
    imported = getattr(getattr(module, "tokenizer", None), "generation", None)
    if isinstance(imported, dict):
        found.update({k: v for k, v in imported.items() if k != "transformers_version"})
    return found


def tokenizer_files(module) -> dict[str, bytes]:
    """The model's own tokenizer as a folder's files ({} when it has none): a Hugging Face tokenizer's
    ``tokenizer.json`` and ``tokenizer_config.json`` (chat template included) as imported, or a
    SentencePiece ``tokenizer.model`` with the ``tokenizer_config.json`` the module docstring describes."""
    tokenizer = module.tokenizer
    if tokenizer is None:
        return {}
    if hasattr(tokenizer, "files"):
        return tokenizer.files()
    piece = tokenizer.sp.id_to_piece
    settings: dict[str, Any] = {"tokenizer_class": "PreTrainedTokenizerFast"}
    for name, token_id in (("bos_token", tokenizer.bos_id), ("eos_token", tokenizer.eos_id),
                           ("unk_token", tokenizer.unk_id), ("pad_token", tokenizer.pad_id),
                           ("mask_token", tokenizer.mask_id)):
        if token_id is not None and token_id >= 0:
            settings[name] = piece(token_id)
    settings.update({
        "add_bos_token": module.config.bos_token_id is not None,
        "add_eos_token": False,
        "split_special_tokens": True,
        "clean_up_tokenization_spaces": False,
        "model_max_length": module.config.max_seq_len,
    })
    return {
        "tokenizer.model": bytes(module.tokenizer_bytes),
        "tokenizer_config.json": (json.dumps(settings, indent=2, sort_keys=True) + "\n").encode(),
    }
