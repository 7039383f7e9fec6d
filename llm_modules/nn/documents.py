"""Packed documents: several documents laid end to end in one row, each computed as if alone.

Packing fills every block with tokens, so no compute goes to padding; without document masking,
though, a token attends to the end of the previous, unrelated document. ``document_ids`` (B, T)
says which document each token belongs to (0, 0, 0, 1, 1, 2, ... in contiguous runs); the mask
then keeps attention inside a document (``AttentionMask.documents``) and the positions restart
at each document's first token, so a document gets the outputs it would get alone in a row.

Restarting positions matters for absolute encodings (learned, sinusoidal), which would otherwise
see a document that starts mid-block at a position it never starts at alone. The relative ones
(RoPE, ALiBi, T5 buckets) depend only on the distance between two tokens of the same document,
which restarting does not change; they restart too, so every encoding follows one rule.
"""

from __future__ import annotations

import torch


def check_document_ids(document_ids: torch.Tensor, batch: int, length: int) -> None:
    """Refuse document ids that do not describe contiguous documents of this batch."""
    if document_ids.shape != (batch, length):
        raise ValueError(
            f"document_ids has shape {tuple(document_ids.shape)}; it must match input_ids ({batch}, {length})"
        )
    if document_ids.dtype.is_floating_point or document_ids.dtype == torch.bool:
        raise ValueError(f"document_ids must hold integer document indices; got {document_ids.dtype}")


def restart_positions(positions: torch.Tensor, document_ids: torch.Tensor) -> torch.Tensor:
    """Positions (B, T) counted from the first token of each token's document.

    ``positions`` are the row's positions (non-decreasing: real tokens counted, padding repeating
    its neighbour's); a document starts where the id changes from the previous token's.
    """
    starts = torch.ones_like(document_ids, dtype=torch.bool)
    starts[:, 1:] = document_ids[:, 1:] != document_ids[:, :-1]
    first = torch.where(starts, positions, torch.zeros_like(positions)).cummax(dim=-1).values
    return positions - first
