"""``llm-modules generate MODEL --fill-mask``: what an encoder-only model (BERT) puts in each mask.

A MaskedLM does not continue text; it guesses every ``<mask>`` of its input at once. The prompt
marks masks with ``<mask>`` (or the tokenizer's own mask token, e.g. BERT's ``[MASK]``); token ids
given with ``--prompt-ids`` use the mask token's id. ``--top-k`` is the number of guesses per mask.
"""

from __future__ import annotations

import argparse

import torch

from llm_modules.registry import ConfigError

MASK = "<mask>"

# generate flags that have no meaning when filling masks: refused rather than ignored
_GENERATION_ONLY = {"sample": "--sample", "temperature": "--temperature", "top_p": "--top-p", "stop": "--stop",
                    "length_penalty": "--length-penalty", "early_stopping": "--early-stopping"}


def check_flags(args: argparse.Namespace) -> None:
    given = [flag for name, flag in _GENERATION_ONLY.items() if getattr(args, name)]
    given += ["--num-beams"] if args.num_beams != 1 else []
    given += ["--repetition-penalty"] if args.repetition_penalty != 1.0 else []
    if given:
        raise ConfigError(f"--fill-mask takes --top-k (guesses per mask); {', '.join(given)} only apply to generation")


def mask_id(tokenizer) -> int:
    found = getattr(tokenizer, "mask_id", None) if tokenizer is not None else None
    if found is None:
        raise ConfigError("--fill-mask: the tokenizer has no mask token; pass --tokenizer with one "
                          "(llm-modules tokenizer train adds <mask>)")
    return found


def encode_masked(tokenizer, text: str) -> list[int]:
    """Ids of ``text`` with each ``<mask>`` as the mask token. SentencePiece keeps ``<mask>`` a control
    symbol that plain text never encodes to, so the text is encoded around it; a Hugging Face
    tokenizer recognises its own mask token in text and adds its [CLS]/[SEP] framing."""
    if hasattr(tokenizer, "encode_prompt"):
        return tokenizer.encode_prompt(text.replace(MASK, tokenizer.mask_token or MASK))
    ids: list[int] = []
    for i, part in enumerate(text.split(MASK)):
        ids += ([tokenizer.mask_id] if i else []) + (tokenizer.encode(part) if part else [])
    return ids


def fill(module, rows: list[list[int]], tokenizer, top_k: int, batch_size: int, device) -> list[list[dict]]:
    """For each row, its masks in order: ``{"position", "tokens", "texts", "probs"}``. Rows are
    right-padded (BERT's layout: positions count from the first token)."""
    mask = mask_id(tokenizer)
    missing = [i + 1 for i, row in enumerate(rows) if mask not in row]
    if missing:
        raise ConfigError(f"prompt {missing[0]} holds no mask; put {MASK} where a guess is wanted")
    pad = module.config.pad_token_id
    results = []
    for start in range(0, len(rows), batch_size):
        batch = rows[start:start + batch_size]
        ids = torch.full((len(batch), max(map(len, batch))), pad, dtype=torch.long)
        attention = torch.zeros_like(ids)
        for i, row in enumerate(batch):
            ids[i, :len(row)] = torch.tensor(row)
            attention[i, :len(row)] = 1
        found = module.fill_mask(ids.to(device), attention.to(device), top_k=top_k, mask_token_id=mask)
        for i in range(len(batch)):
            results.append([
                {"position": position, "tokens": tokens, "texts": [tokenizer.decode([t]) for t in tokens],
                 "probs": [round(p, 6) for p in probs]}
                for position, tokens, probs in found.for_row(i)
            ])
    return results


def format_masks(masks: list[dict]) -> str:
    """One line per mask: its guesses, most likely first, as quoted text and probability."""
    import json

    return "\n".join(
        f"  mask {n}: " + "  ".join(f"{json.dumps(t, ensure_ascii=False)} {p:.3f}" for t, p in zip(m["texts"], m["probs"]))
        for n, m in enumerate(masks, 1)
    )
