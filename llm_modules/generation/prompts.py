"""Prompts in, batches out: reading a prompts file and left-padding token rows.

Shared by ``llm-modules generate``, the prediction data module and generation metrics, so every
route encodes and pads prompts the same way. Decoder prompts are left-padded: the next token of
every row then lands in the same column (see ``generation.session``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from llm_modules.padding import pad_sequences
from llm_modules.registry import ConfigError


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``input_ids`` and ``attention_mask`` (B, longest row), real tokens at the right."""
    if not rows:
        raise ValueError("no prompts to pad")
    return pad_sequences(rows, pad_id, left=True)


def new_tokens(module, generated: torch.Tensor, prompt_width: int, eos_ids, pad_id: int) -> list[list[int]]:
    """The new tokens of each row ``generate`` returned, through the first stop token.

    ``generate`` returns what it started from (the left-padded prompt of width ``prompt_width`` for
    decoders, the decoder start token for a Seq2SeqLM) followed by the new tokens, and fills rows
    that stopped early with ``pad_id``; neither is part of the answer.
    """
    start = 1 if getattr(module, "kind", None) == "Seq2SeqLM" else prompt_width
    stops = set(eos_ids)
    rows = []
    for row in generated[:, start:].tolist():
        end = next((i + 1 for i, t in enumerate(row) if t in stops), len(row))
        row = row[:end]
        while row and row[-1] == pad_id and pad_id not in stops:
            row.pop()
        rows.append(row)
    return rows


def encode_prompt(tokenizer, module, text: str) -> list[int]:
    """A prompt's ids as the model saw text in training. A Hugging Face tokenizer adds what its own
    post-processor adds (as transformers does: BOS for LLaMA, none for GPT-2); a SentencePiece one
    adds BOS only when the model has one (imported models such as LLaMA): llm-modules' own training
    data has none."""
    if hasattr(tokenizer, "encode_prompt"):
        return tokenizer.encode_prompt(text)
    bos = module.config.bos_token_id is not None and tokenizer.bos_id >= 0
    return tokenizer.encode(text, bos=bos)


def stop_ids(module, tokenizer) -> list[int]:
    """The ids that end a row by default (``generation.defaults.stop_ids``: the generation config's
    EOS list, else the model's EOS, else its tokenizer's). Passed to ``generate`` explicitly, so a
    tokenizer given from outside the checkpoint counts too."""
    from llm_modules.generation.defaults import stop_ids as default_stop_ids

    return default_stop_ids(module, tokenizer)


def continuation_text(tokenizer, prompt_ids: Sequence[int], new_ids: Sequence[int]) -> str:
    """The text the new tokens add after the prompt.

    Decoding the new tokens alone can lose what they mean after the prompt: SentencePiece models
    with a dummy prefix (LLaMA, T5) drop the leading space of the first piece. So the text is
    decode(prompt tail + new) minus decode(prompt tail), as transformers' text-generation pipeline
    does; a few prompt tokens of context suffice. Pass no prompt ids for an encoder-decoder, whose
    output does not continue its input.
    """
    tail = list(prompt_ids)[-_CONTEXT:]
    if not tail:
        return tokenizer.decode(new_ids)
    before, whole = tokenizer.decode(tail), tokenizer.decode(tail + list(new_ids))
    return whole[len(before):] if whole.startswith(before) else tokenizer.decode(new_ids)


_CONTEXT = 8  # prompt tokens decoded with the new ones (continuation_text)


def read_prompts(path: str | os.PathLike, field: str = "prompt") -> list[str]:
    """Prompts from a file: one per line, or from ``.jsonl`` records' ``field``. Blank lines of a text
    file are skipped; escapes such as ``\\n`` are not interpreted (use JSONL for multi-line prompts)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"prompts file {str(path)!r} does not exist; give a text file (one prompt per line) or JSONL")
    text = p.read_text(encoding="utf-8")
    if p.suffix != ".jsonl":
        prompts = [line for line in text.splitlines() if line.strip()]
    else:
        prompts = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ConfigError(f"{path}:{number}: not a JSON record ({err.msg})") from None
            if not isinstance(record, dict) or not isinstance(record.get(field), str):
                raise ConfigError(f"{path}:{number}: the record has no text field {field!r}")
            prompts.append(record[field])
    if not prompts:
        raise ConfigError(f"prompts file {str(path)!r} holds no prompts")
    return prompts
