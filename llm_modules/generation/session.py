"""Decoding sessions: one object per batch of prompts that turns "append these tokens" into "the
logits for the next one", for every LM kind that generates left to right.

The search algorithms (greedy, sampling, beam search) only talk to a session, so they are written
once for decoders and encoder-decoders alike. A session keeps the growing sequences, their padding
mask and, with ``use_cache`` (the default), a ``KVCache``, so each step runs the model on the new
token alone; ``use_cache=False`` reruns the whole sequence every step, the reference the cached
path is tested against.

Decoder prompts are left-padded (``attention_mask`` 0 on the left): every row's next token then
sits in the same column, and positions count real tokens only, so padding changes no logit.

Sized for the whole run (``max_new_tokens``), a session allocates its sequences, padding mask and
cache once and writes each step's token in place; after the prompt, a decoder whose layout has
one (``nn.decode_step``) runs each step through its lean ``DecodeStep`` instead of the modules.
"""

from __future__ import annotations

import torch
from torch import nn

from llm_modules.nn.decode_step import DecodeStep
from llm_modules.nn.kv_cache import KVCache
from llm_modules.nn.lm import DecoderLM, EncoderDecoderLM, EncoderLM
from llm_modules.registry import ConfigError


class DecoderSession:
    """CausalLM and PrefixLM. For a prefix decoder the prompt is the prefix: its real tokens see
    each other in both directions, every generated token sees only its past."""

    def __init__(self, model: DecoderLM, input_ids, attention_mask=None, *, use_cache=True, prefix_lengths=None,
                 max_new_tokens: int | None = None):
        self.model = model
        self.prefix_ids = input_ids
        self.capacity = _capacity(input_ids, max_new_tokens)
        self._ids = Columns(input_ids, self.capacity)
        padding = _padding(attention_mask, input_ids)
        self._mask = None if padding is None else Columns(padding, self.capacity)
        if model.prefix and prefix_lengths is None:
            prefix_lengths = self.prefix_mask.sum(1)
        self.prefix_lengths = prefix_lengths if model.prefix else None
        self.cache = KVCache(self.capacity) if use_cache else None
        self._fast: DecodeStep | None | bool = False  # built at the first step (False: not yet)

    @property
    def ids(self) -> torch.Tensor:
        return self._ids.view

    @property
    def mask(self) -> torch.Tensor | None:
        return None if self._mask is None else self._mask.view

    @property
    def prefix_mask(self) -> torch.Tensor:
        mask = self.mask if self.mask is not None else torch.ones_like(self.ids)
        return mask[:, : self.prefix_ids.shape[1]]

    @property
    def batch_size(self) -> int:
        return self.ids.shape[0]

    @torch.no_grad()
    def start(self) -> torch.Tensor:
        model = self.model
        if type(model).forward is not DecoderLM.forward:
            return model(self.ids, self.mask, self.prefix_lengths, cache=self.cache)[:, -1].float()
        # DecoderLM.forward is head(hidden): the head reads the last position only, not the whole prompt
        hidden = model.hidden(self.ids, self.mask, self.prefix_lengths, cache=self.cache)
        return model.head(hidden[:, -1:])[:, -1].float()

    @torch.no_grad()
    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        new = tokens.view(-1, 1).to(self.ids)
        self._ids.append(new)
        if self._mask is not None:
            self._mask.append(1)
        if self.cache is None:
            return self.model(self.ids, self.mask, self.prefix_lengths)[:, -1].float()
        if _cache_goes_stale(self.model, self.ids.shape[1]):  # recompute every key, as transformers' Phi-3 does
            self.cache = KVCache(self.capacity)
            return self.model(self.ids, self.mask, self.prefix_lengths, cache=self.cache)[:, -1].float()
        if self._fast is False:
            steps = None if self.capacity is None else self.capacity - self.ids.shape[1] + 1
            self._fast = DecodeStep.build(self.model, rows=self.batch_size, steps=steps)
        if self._fast is not None:
            return self._fast(new, self.mask, self.cache, self.prefix_lengths).float()
        return self.model(new, self.mask, self.prefix_lengths, cache=self.cache)[:, -1].float()

    def reorder(self, index: torch.Tensor) -> None:
        index = index.to(self.ids.device)
        self.prefix_ids = self.prefix_ids[index]
        self._ids.reorder(index)
        if self._mask is not None:
            self._mask.reorder(index)
        if self.prefix_lengths is not None:
            self.prefix_lengths = self.prefix_lengths[index]
        if self.cache is not None:
            self.cache.reorder(index)


class Seq2SeqSession:
    """Seq2SeqLM: the prompt is the encoder input, encoded once; the decoder starts from the
    decoder start token (``pad_token_id``, the T5 convention) and attends to the encoder output,
    whose cross-attention keys/values the cache projects once."""

    def __init__(self, model: EncoderDecoderLM, input_ids, attention_mask=None, *, use_cache=True,
                 max_new_tokens: int | None = None):
        self.model = model
        self.encoder_mask = _padding(attention_mask, input_ids, left_only=False)
        with torch.no_grad():
            self.memory = model.encode(input_ids, self.encoder_mask)
        start = torch.full((input_ids.shape[0], 1), model.config.pad_token_id, dtype=torch.long, device=input_ids.device)
        self.prefix_ids = start
        self._ids = Columns(start, _capacity(start, max_new_tokens))
        self.cache = KVCache(_capacity(start, max_new_tokens)) if use_cache else None

    @property
    def ids(self) -> torch.Tensor:
        return self._ids.view

    @property
    def prefix_mask(self) -> torch.Tensor:
        return torch.ones_like(self.prefix_ids)

    @property
    def batch_size(self) -> int:
        return self.ids.shape[0]

    @torch.no_grad()
    def start(self) -> torch.Tensor:
        return self.model.decode(self.ids, self.memory, self.encoder_mask, cache=self.cache)[:, -1].float()

    @torch.no_grad()
    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        new = tokens.view(-1, 1).to(self.ids)
        self._ids.append(new)
        if self.cache is None:
            return self.model.decode(self.ids, self.memory, self.encoder_mask)[:, -1].float()
        return self.model.decode(new, self.memory, self.encoder_mask, cache=self.cache)[:, -1].float()

    def reorder(self, index: torch.Tensor) -> None:
        index = index.to(self.ids.device)
        self.prefix_ids, self.memory = self.prefix_ids[index], self.memory[index]
        self._ids.reorder(index)
        if self.encoder_mask is not None:
            self.encoder_mask = self.encoder_mask[index]
        if self.cache is not None:
            self.cache.reorder(index)


Session = DecoderSession | Seq2SeqSession


class Columns:
    """A (B, T) tensor that grows by one column per step, in a buffer allocated for ``capacity``
    columns (none: it doubles when full): ``view`` is the filled part."""

    def __init__(self, first: torch.Tensor, capacity: int | None):
        self.length = first.shape[1]
        self.buffer = first.new_empty(first.shape[0], max(capacity or 0, self.length))
        self.buffer[:, : self.length] = first

    @property
    def view(self) -> torch.Tensor:
        return self.buffer[:, : self.length]

    def append(self, column: torch.Tensor | int) -> None:
        if self.length == self.buffer.shape[1]:
            grown = self.buffer.new_empty(self.buffer.shape[0], max(2 * self.length, 1))
            grown[:, : self.length] = self.buffer
            self.buffer = grown
        self.buffer[:, self.length : self.length + 1] = column
        self.length += 1

    def reorder(self, index: torch.Tensor) -> None:
        """Keep rows ``index`` (beam search), in place while the row count stays."""
        if index.shape[0] == self.buffer.shape[0]:
            self.view.copy_(self.view.index_select(0, index))
        else:
            self.buffer = self.buffer.index_select(0, index)


def open_session(
    module: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    use_cache: bool = True,
    prefix_lengths: torch.Tensor | None = None,
    max_new_tokens: int | None = None,
) -> Session:
    """A session over a LanguageModel (or its torch model) and a batch of prompts (B, T).

    ``max_new_tokens`` only sizes the cache up front; ``prefix_lengths`` overrides a prefix
    decoder's default (the whole real prompt).
    """
    model = getattr(module, "model", module)
    if input_ids.ndim != 2 or input_ids.dtype not in (torch.long, torch.int, torch.int64):
        raise ValueError(f"input_ids must be a (batch, length) integer tensor; got {tuple(input_ids.shape)} {input_ids.dtype}")
    if attention_mask is not None and attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"attention_mask has shape {tuple(attention_mask.shape)}; it must match input_ids {tuple(input_ids.shape)}"
        )
    if isinstance(model, EncoderDecoderLM):
        if prefix_lengths is not None:
            raise ConfigError("prefix_lengths is for prefix decoders (PrefixLM); a Seq2SeqLM's prompt is its encoder input")
        return Seq2SeqSession(model, input_ids, attention_mask, use_cache=use_cache, max_new_tokens=max_new_tokens)
    if isinstance(model, DecoderLM):
        if input_ids.shape[1] == 0:
            raise ValueError("a decoder needs at least one prompt token (e.g. the BOS token) to continue from")
        if prefix_lengths is not None and not model.prefix:
            raise ConfigError("prefix_lengths is for prefix decoders (PrefixLM); this is a causal decoder")
        return DecoderSession(
            model, input_ids, attention_mask, use_cache=use_cache, prefix_lengths=prefix_lengths,
            max_new_tokens=max_new_tokens,
        )
    if isinstance(model, EncoderLM):
        raise ConfigError(
            "a MaskedLM does not generate left to right; use fill_mask (llm_modules.generation.fill_mask) "
            "to predict masked tokens"
        )
    raise ConfigError(f"cannot generate with {type(model).__name__}; expected a CausalLM, PrefixLM or Seq2SeqLM")


def _padding(attention_mask: torch.Tensor | None, input_ids: torch.Tensor, left_only: bool = True) -> torch.Tensor | None:
    """The padding mask as 0/1 longs, or None when nothing is padded (the fused kernels' fast path).
    Decoder prompts must be left-padded; an encoder's input may be padded on either side."""
    if attention_mask is None or bool(attention_mask.bool().all()):
        return None
    if left_only and bool((attention_mask[:, -1] == 0).any()):
        raise ValueError(
            "prompts must be left-padded for generation (attention_mask 0 only on the left): "
            "the next token of every row must follow its last real token"
        )
    return attention_mask.long()


def _cache_goes_stale(model: DecoderLM, width: int) -> bool:
    """Whether the sequences, now ``width`` long, have just grown past a length beyond which a
    position encoding's cached keys are stale (``PositionEncoding.cache_stale_after``)."""
    return any(getattr(p, "cache_stale_after", None) == width - 1 for p in model.position_encodings())


def _capacity(ids: torch.Tensor, max_new_tokens: int | None) -> int | None:
    return ids.shape[1] + max_new_tokens if max_new_tokens is not None else None
