"""Virtual tokens: learned tokens that sit in front of each row's real tokens.

Soft prompts (prompt tuning, P-tuning) and prefix tuning all add P tokens that no tokenizer
produced. The torch models know nothing of them: this module feeds them through the models'
public inputs, as Hugging Face PEFT does. A ``VirtualTokens`` module supplies, per stack, either

- input embeddings (B, P, D) that enter the stack like embedded tokens (soft prompts): the model
  reads them through ``inputs_embeds``, and its output for them is dropped again; or
- key/value prefixes, one (keys, values) pair of (B, Hkv, P, Dh) per layer, that every
  self-attention of the stack attends to without computing them (prefix tuning): the model
  reads them through a KV cache that already holds them, as the keys of P earlier positions.

Where they sit. Virtual tokens take positions 0..P-1 and the real tokens P.. (what Hugging Face
does for prefix tuning through ``past_key_values``). In index space they go right before each
row's first real token: a right-padded row becomes [V, real, pad], a left-padded one
[pad, V, real]. Keeping them next to the real tokens, rather than always at index 0, matters for
encodings that read index distances (ALiBi, T5 buckets): with them at index 0 a left-padded row
would see its prompt farther away than the same row alone. Every mask rule then follows from the
attention mask extended with P ones at that place: positions count the virtual tokens first,
causal order lets every real token see them, a PrefixLM prefix grows by P (the virtual tokens
belong to the prefix), and a sliding window or sparse stride treats them as the tokens at
positions 0..P-1 (a query farther than ``window`` no longer sees them, as with any cached key).

Decoding with a ``KVCache``: the first call (empty cache) puts the virtual tokens' keys and values
into the cache with the prompt; the caller's attention mask never covers them (it covers the
real tokens only, as a generation session builds it), so every call extends it by P at the same
place. That place depends only on the row's leading padding, which later steps do not change. A
row with no real token at all has no such place (padding-only rows are not served by decoding).

Key/value prefixes enter the cache as ``PrefixedEntry`` entries, which hold the prefix until the
first keys arrive and then lay it out among them at the row's place; the cache counts the P
positions as already held. Keys are used as given: like cached keys they are not rotated by RoPE
again. Without a caller's cache a temporary one carries them. A stack that runs with a cache skips
activation checkpointing, so prefixes with checkpointed blocks are refused rather than silently
using more memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from llm_modules.nn.kv_cache import CacheEntry, KVCache


class VirtualTokens(nn.Module):
    """What a model's ``virtual_tokens`` supplies, per stack. Stacks are named by the model's
    attribute (``"stack"`` for decoder- and encoder-only models, ``"encoder"``/``"decoder"``).

    A subclass answers ``num_virtual_tokens`` for every stack and, for stacks where that is not
    zero, either ``embeddings`` or ``key_values``. ``enabled = False`` leaves them out of every
    stack while they stay in the model (the base function, for a reference model).
    """

    enabled: bool = True

    def num_virtual_tokens(self, stack: str) -> int:
        """P for this stack (0: none)."""
        return 0

    def embeddings(self, stack: str, batch: int) -> torch.Tensor | None:
        """(batch, P, d_model) input vectors to put in front of the real tokens' embeddings, or None."""
        return None

    def key_values(self, stack: str, batch: int) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
        """Per layer, (keys, values) of shape (batch, kv_heads, P, head_dim), or None."""
        return None


def first_real(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B,) index of each row's first real token: its count of leading padding."""
    return (attention_mask.long().cumsum(1) == 0).sum(1)


class Placement:
    """Where P virtual tokens go in each row of one call: right before the first real token.

    Without an attention mask nothing is padded and they simply lead every row.
    """

    def __init__(self, count: int, attention_mask: torch.Tensor | None):
        self.count = count
        self.start = None if attention_mask is None else first_real(attention_mask).unsqueeze(1)

    def insert(self, real: torch.Tensor, virtual: torch.Tensor, dim: int) -> torch.Tensor:
        """``real`` with ``virtual`` (P along ``dim``) placed in every row; dim 0 is the batch."""
        combined = torch.cat((virtual.to(real.dtype), real), dim)
        if self.start is None:
            return combined
        p, j = self.count, torch.arange(combined.shape[dim], device=real.device).unsqueeze(0)
        # Output index j takes: real token j before the start, virtual token j - start inside the
        # gap, real token j - P after it; in ``combined`` real token r sits at P + r.
        index = torch.where(j < self.start, j + p, torch.where(j < self.start + p, j - self.start, j))
        return _take(combined, index, dim)

    def remove(self, x: torch.Tensor, dim: int = 1) -> torch.Tensor:
        """``x`` without the virtual tokens ``insert`` put there (the real tokens, in order)."""
        if self.start is None:
            return x.narrow(dim, self.count, x.shape[dim] - self.count)
        i = torch.arange(x.shape[dim] - self.count, device=x.device).unsqueeze(0)
        return _take(x, torch.where(i < self.start, i, i + self.count), dim)

    def extend(self, attention_mask: torch.Tensor | None) -> torch.Tensor | None:
        """The attention mask with the virtual tokens counted as real tokens."""
        if attention_mask is None:
            return None
        ones = attention_mask.new_ones(attention_mask.shape[0], self.count)
        return self.insert(attention_mask, ones, 1)


def _take(x: torch.Tensor, index: torch.Tensor, dim: int) -> torch.Tensor:
    """``x`` gathered along ``dim`` with a per-row index (B, N)."""
    shape = [1] * x.ndim
    shape[0], shape[dim] = index.shape
    size = list(x.shape)
    size[dim] = index.shape[1]
    return x.gather(dim, index.view(shape).expand(size))


class PrefixedEntry(CacheEntry):
    """A self-attention cache entry that holds a key/value prefix and places it among the first
    keys it gets. After that first append it is an ordinary entry (growth, beam reordering)."""

    def __init__(self, capacity: int | None, keys: torch.Tensor, values: torch.Tensor, placement: Placement):
        super().__init__(capacity)
        self._prefix: tuple[torch.Tensor, torch.Tensor, Placement] | None = (keys, values, placement)

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self._prefix is not None:
            keys, values, placement = self._prefix
            self._prefix = None
            k, v = placement.insert(k, keys, 2), placement.insert(v, values, 2)
        return super().append(k, v)


@dataclass
class StackCall:
    """One stack call's public inputs with the virtual tokens in place.

    ``attention_mask`` counts the virtual tokens; ``cache`` is the caller's, or a temporary one,
    holding the prefixes; ``embeddings`` (B, P, D), when this call feeds them as inputs, go into
    the input with ``insert`` and the stack's output for them leaves with ``output``.
    """

    attention_mask: torch.Tensor | None
    cache: KVCache | None
    count: int
    placement: Placement
    embeddings: torch.Tensor | None = None

    def insert(self, x: torch.Tensor) -> torch.Tensor:
        """The embedded real tokens (B, T, D) with the virtual ones in place (B, P + T, D)."""
        return self.placement.insert(x, self.embeddings, 1)

    def shift(self, prefix_lengths: torch.Tensor | None) -> torch.Tensor | None:
        """PrefixLM prefix lengths (counted in positions): the virtual tokens join the prefix."""
        return prefix_lengths + self.count if prefix_lengths is not None else None

    def output(self, out: torch.Tensor) -> torch.Tensor:
        """The stack's output (hidden states or logits) for the real tokens only."""
        return out if self.embeddings is None else self.placement.remove(out)


def place(
    virtual: VirtualTokens | None, name: str, stack: nn.Module, batch: int,
    attention_mask: torch.Tensor | None, cache: KVCache | None, document_ids: torch.Tensor | None = None,
) -> StackCall | None:
    """Prepare one forward of stack ``name`` over ``batch`` rows; None when it has no virtual tokens."""
    count = virtual.num_virtual_tokens(name) if virtual is not None and virtual.enabled else 0
    if not count:
        return None
    if document_ids is not None:
        raise ValueError(
            "document_ids (packed documents) cannot be combined with virtual tokens (prompt or prefix "
            "tuning): the virtual tokens lead a row, not each document in it; drop data.document_mask"
        )
    placement = Placement(count, attention_mask)
    mask = placement.extend(attention_mask)
    if cache is not None and cache.length:
        return StackCall(mask, cache, count, placement)  # decoding: the cache already holds them
    if cache is not None and cache.capacity:
        cache.capacity += count  # they take cache slots too: size the buffers for them up front
    embeddings = virtual.embeddings(name, batch)
    if embeddings is not None:
        return StackCall(mask, cache, count, placement, embeddings)
    return StackCall(mask, prefilled(virtual, name, stack, batch, placement, cache), count, placement)


def prefilled(
    virtual: VirtualTokens, name: str, stack: nn.Module, batch: int, placement: Placement, cache: KVCache | None
) -> KVCache:
    """``cache`` (or a new one) holding the stack's key/value prefixes as its first P positions."""
    count, key_values, layers = placement.count, virtual.key_values(name, batch), len(stack.layers)
    if key_values is None or len(key_values) != layers:
        raise ValueError(
            f"{type(virtual).__name__} counts {count} virtual tokens for stack {name!r} but supplies "
            f"{'neither embeddings nor key/values' if key_values is None else f'{len(key_values)} key/value pairs'} "
            f"(the stack has {layers} layers)"
        )
    if cache is None:
        if stack.checkpointed and torch.is_grad_enabled():
            raise ValueError(
                "key/value prefixes (prefix tuning) run the stack with a cache, which skips activation "
                "checkpointing; set model.memory.activation_checkpointing to false or "
                "use prompt/ptuning, which add input embeddings instead"
            )
        cache = KVCache()
    for i, (keys, values) in enumerate(key_values):
        cache.layer(i).self_attn = PrefixedEntry(cache.capacity, keys, values, placement)
    cache.length += count
    return cache
