"""Padding token rows into a batch: the one piece that the data collators and generation's prompt
batches share, kept below both so that neither package imports the other for it."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def pad_sequences(
    sequences: Sequence[Sequence[int]], pad_value: int, left: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad to the longest row, on the right (training batches) or the ``left`` (prompts to generate
    from): ``(ids (B, T) long, attention_mask (B, T) long, 1 = real token)``."""
    if not sequences:
        raise ValueError("cannot collate an empty batch")
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_value, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if len(seq):
            cols = slice(width - len(seq), width) if left else slice(0, len(seq))
            ids[row, cols] = torch.as_tensor(seq, dtype=torch.long)
            mask[row, cols] = 1
    return ids, mask
