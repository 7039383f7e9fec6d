"""Splitting documents into train/validation and packing them into fixed-length token blocks.

Whole documents go to one split (by a seeded hash of their id, so the split stays put when files are
added); a split's documents are laid end to end with EOS after each and cut into blocks.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from llm_modules.data.token_cache import TokenCache
from llm_modules.registry import ConfigError


def _unit_hash(seed: int, source_id: str) -> float:
    digest = hashlib.sha256(f"{seed}\0{source_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def is_validation(source_id: str, val_fraction: float, seed: int) -> bool:
    """The split rule on its own (used to keep validation text out of tokenizer training)."""
    return _unit_hash(seed, source_id) < val_fraction


def split_documents(
    source_ids: Sequence[str], val_fraction: float, seed: int, field: str = "data.val_fraction"
) -> tuple[np.ndarray, np.ndarray]:
    """Indices of training and validation documents.

    Hash rule per document; when that leaves a side empty on a small corpus, the document with the
    lowest (highest) hash moves over, so both splits exist whenever ``0 < val_fraction < 1``.
    ``val_fraction`` 1 holds out everything (data given only to evaluate).
    """
    n = len(source_ids)
    if val_fraction <= 0:
        return np.arange(n), np.arange(0)
    if val_fraction >= 1:  # evaluation data: every document is held out
        return np.arange(0), np.arange(n)
    if n < 2:
        raise ConfigError(
            f"{field}={val_fraction}: the data holds only {n} document and the split is by document; "
            "give more documents or set val_fraction: 0"
        )
    u = np.array([_unit_hash(seed, s) for s in source_ids])
    val = u < val_fraction
    if not val.any():
        val[np.argmin(u)] = True
    if val.all():
        val[np.argmax(u)] = False
    return np.flatnonzero(~val), np.flatnonzero(val)


# ---- packing --------------------------------------------------------------------------------------------


class PackedBlocks(Dataset):
    """Blocks of ``seq_len`` tokens cut from documents laid end to end, EOS after each document.

    Nothing is materialised: block k is gathered from the memmap on demand (binary search for the
    document it starts in). The memmap is reopened lazily in each DataLoader worker rather than
    pickled, since pickling a memmap copies the whole array.
    """

    def __init__(self, cache: TokenCache, doc_order: np.ndarray, seq_len: int, eos_id: int):
        self.path, self.dtype = cache.token_path, cache.tokens.dtype
        self.total_tokens = cache.num_tokens
        self.doc_order = doc_order = np.asarray(doc_order, dtype=np.int64)  # indices into the cache
        self.starts = cache.offsets[doc_order]
        self.lengths = cache.offsets[doc_order + 1] - self.starts
        self.cum = np.concatenate([[0], np.cumsum(self.lengths + 1)])  # +1: the EOS after each document
        self.seq_len, self.eos_id = seq_len, eos_id
        self.num_documents = len(doc_order)
        self.num_bytes = int(cache.doc_bytes[doc_order].sum())
        self._tokens = cache.tokens

    @property
    def stream_tokens(self) -> int:
        """Tokens in the packed stream: document tokens plus one EOS each."""
        return int(self.cum[-1])

    def __len__(self) -> int:
        return self.stream_tokens // self.seq_len

    def __getitem__(self, k: int) -> torch.Tensor:
        if not 0 <= k < len(self):
            raise IndexError(k)
        tokens = self._open()
        out = np.empty(self.seq_len, dtype=np.int64)
        pos, filled = k * self.seq_len, 0
        j = int(np.searchsorted(self.cum, pos, side="right")) - 1
        while filled < self.seq_len:
            inside = pos - self.cum[j]
            if inside < self.lengths[j]:
                n = int(min(self.lengths[j] - inside, self.seq_len - filled))
                start = self.starts[j] + inside
                out[filled:filled + n] = tokens[start:start + n]
                filled += n
                pos += n
            else:  # the EOS that closes document j
                out[filled] = self.eos_id
                filled += 1
                pos += 1
                j += 1
        return torch.from_numpy(out)

    def _open(self) -> np.ndarray:
        if self._tokens is None:
            self._tokens = np.memmap(self.path, dtype=self.dtype, mode="r", shape=(self.total_tokens,))
        return self._tokens

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_tokens"] = None
        return state


def stack_blocks(blocks: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """The causal-LM batch: ``{"input_ids": (B, seq_len)}``; the model derives targets by shifting."""
    return {"input_ids": torch.stack([torch.as_tensor(b, dtype=torch.long) for b in blocks])}


# ---- document boundaries --------------------------------------------------------------------------------


def document_ids(blocks: torch.Tensor, eos_id: int) -> torch.Tensor:
    """(B, T) index of each token's document within its block: the number of EOS tokens before it.

    Packing ends every document with EOS and the tokenizer never produces EOS from text, so the EOS
    tokens are exactly the boundaries; an EOS belongs to the document it closes. A block's first
    document may be the tail of one begun in the previous block: it is simply a shorter document.
    """
    eos = (blocks == eos_id).long()
    return eos.cumsum(-1) - eos


class WithDocumentIds:
    """A collate function that adds ``document_ids`` (B, T) to the batch another one builds.

    The boundaries come from the packed blocks themselves, before the collator rewrites anything
    (a masking collator may replace tokens), so it works with any collator that keeps each block's
    tokens in place: the default causal stack and the masked-LM collator. One that changes the
    length (span corruption) or adds a per-row prefix is refused: their rows are not the packed
    documents any more.
    """

    def __init__(self, collate, eos_id: int):
        self.collate, self.eos_id = collate, int(eos_id)

    def __call__(self, blocks: list) -> dict[str, torch.Tensor]:
        batch = self.collate(blocks)
        stacked = torch.stack([torch.as_tensor(b, dtype=torch.long) for b in blocks])
        if "prefix_lengths" in batch or tuple(batch["input_ids"].shape) != tuple(stacked.shape):
            name = getattr(self.collate, "__name__", type(self.collate).__name__)
            raise ConfigError(
                "data.document_mask needs a collator that keeps the packed blocks as they are (the causal "
                f"default or MaskingCollator); {name} changes them. Set data.document_mask: false for this "
                "objective"
            )
        batch["document_ids"] = document_ids(stacked, self.eos_id)
        return batch
