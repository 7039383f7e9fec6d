"""From what a stack call is given to its self-attention mask and the new tokens' positions.

Four concerns meet in one self-attention mask, and ``MaskInputs`` keeps them apart:

- padding, every call: ``attention_mask`` (1 = real token); positions count real tokens only,
  so left padding does not shift them;
- the LM kind: ``causal``, and a prefix decoder's ``prefix_lengths`` (PrefixLM);
- decoding: a ``cache`` that already holds earlier positions, so the new tokens are queries
  that start there;
- training on packed rows: ``document_ids`` (``nn.documents``), attention inside each document.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llm_modules.nn.documents import check_document_ids, restart_positions
from llm_modules.nn.kv_cache import KVCache
from llm_modules.nn.masks import AttentionMask


def positions_from(attention_mask: torch.Tensor | None, batch: int, length: int, device) -> torch.Tensor:
    """Position of each token among the real tokens of its row, so left padding does not shift them."""
    if attention_mask is None:
        return torch.arange(length, device=device).unsqueeze(0).expand(batch, length)
    return (attention_mask.long().cumsum(-1) - 1).clamp_min(0)


@dataclass(frozen=True)
class MaskInputs:
    """What decides which keys the new tokens of one stack call see.

    With a ``cache`` (decoding) ``attention_mask`` covers the cached tokens and the new ones
    (B, past + new); ``document_ids`` (B, T) are for training on packed rows only, so neither a
    cache nor a prefix goes with them.
    """

    causal: bool
    attention_mask: torch.Tensor | None = None
    prefix_lengths: torch.Tensor | None = None
    cache: KVCache | None = None
    document_ids: torch.Tensor | None = None

    def __post_init__(self):
        if self.document_ids is not None and (self.cache is not None or self.prefix_lengths is not None):
            raise ValueError(
                "document_ids (packed documents) cannot be combined with "
                + ("a KV cache: decode one document per row" if self.cache is not None
                   else "prefix_lengths: a prefix belongs to a row, not to a document; drop data.document_mask")
            )

    @property
    def past(self) -> int:
        """Positions the cache already holds: where the new tokens' queries start."""
        return self.cache.length if self.cache is not None else 0


def self_attention_mask(cfg, inputs: MaskInputs, x: torch.Tensor) -> tuple[AttentionMask, torch.Tensor]:
    """The self-attention mask over the new tokens ``x`` (B, new, D), and their positions (B, new).

    The mask's keys span the cached tokens and the new ones; positions of the whole row are
    counted, and the new tokens' are returned. Packed documents restart positions at each one.
    """
    batch, new = x.shape[:2]
    past = inputs.past
    total = past + new
    padding = inputs.attention_mask
    if padding is not None and padding.shape[1] != total:
        raise ValueError(
            f"attention_mask covers {padding.shape[1]} tokens; with {past} cached and {new} new it must cover {total}"
        )
    positions = positions_from(padding, batch, total, x.device)
    # Without padding, index = position and the mask stays plain (fused causal kernels).
    structure = None if padding is None else positions
    if inputs.document_ids is not None:
        check_document_ids(inputs.document_ids, batch, total)
        positions = structure = restart_positions(positions, inputs.document_ids)
    mask = AttentionMask(
        new, total, causal=inputs.causal, prefix_lengths=inputs.prefix_lengths,
        key_padding=None if padding is None else padding.bool(),
        # no window: it is per layer, and the stack adds it to its sliding layers (Stack._layer_masks)
        stride=cfg.sparse_stride, q_offset=past, positions=structure, documents=inputs.document_ids,
    )
    return mask, positions[:, past:]
