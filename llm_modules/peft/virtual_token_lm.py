"""The torch LMs with virtual tokens: each LM class of ``nn.lm`` with its entry points wrapped.

A virtual-token method (prompt, ptuning, prefix) changes the class of the model it is applied to
into the matching subclass below and sets its ``virtual_tokens``. Each subclass overrides the
methods that take token ids (``hidden``, which ``forward`` calls; ``encode`` and ``decode``) with
the same signature: they place the virtual tokens (``peft.virtual_tokens``) and call the base
method through its public inputs, ``inputs_embeds``, ``attention_mask``, ``prefix_lengths`` and
the KV ``cache``. The model stays the same object, so it is changed in place as every PEFT method
changes it: state-dict keys, ``isinstance`` checks, generation sessions, deep copies (a frozen
reference) and the methods' merge and adapter files all see the model they saw before.
"""

from __future__ import annotations

from contextlib import AbstractContextManager

import torch
from torch import nn

from llm_modules.nn.lm import DecoderLM, EncoderDecoderLM, EncoderLM, embedded
from llm_modules.peft.base import switched_off
from llm_modules.peft.virtual_tokens import Placement, VirtualTokens, place
from llm_modules.registry import ConfigError


def _rows(input_ids, inputs_embeds) -> int:
    return (input_ids if input_ids is not None else inputs_embeds).shape[0]


class _SingleStackWithVirtualTokens:
    """``hidden`` of a decoder- or encoder-only LM, with the virtual tokens of its ``"stack"``."""

    def hidden(
        self, input_ids=None, attention_mask=None, prefix_lengths=None, token_type_ids=None, cache=None,
        document_ids=None, *, inputs_embeds=None,
    ) -> torch.Tensor:
        rows = _rows(input_ids, inputs_embeds)
        call = place(self.virtual_tokens, "stack", self.stack, rows, attention_mask, cache, document_ids)
        if call is None:
            return super().hidden(
                input_ids, attention_mask, prefix_lengths, token_type_ids, cache, document_ids,
                inputs_embeds=inputs_embeds,
            )
        if call.embeddings is not None:
            inputs_embeds = call.insert(embedded(self.embed, input_ids, inputs_embeds, token_type_ids))
            input_ids = token_type_ids = None
        hidden = super().hidden(
            input_ids, call.attention_mask, call.shift(prefix_lengths), token_type_ids, call.cache, document_ids,
            inputs_embeds=inputs_embeds,
        )
        return call.output(hidden)


class DecoderLMWithVirtualTokens(_SingleStackWithVirtualTokens, DecoderLM):
    """A ``DecoderLM`` (CausalLM, PrefixLM) with virtual tokens."""


class EncoderLMWithVirtualTokens(_SingleStackWithVirtualTokens, EncoderLM):
    """An ``EncoderLM`` (MaskedLM) with virtual tokens."""


class EncoderDecoderLMWithVirtualTokens(EncoderDecoderLM):
    """An ``EncoderDecoderLM`` with virtual tokens: soft prompts lead the encoder's input and stay
    in its output (the decoder cross-attends to them); prefixes may serve both stacks."""

    def encode(self, input_ids=None, attention_mask=None, *, inputs_embeds=None, cache=None):
        """The encoder output; with soft prompts (B, P + T, D), the virtual tokens where they were
        placed (``decode`` extends the same ``attention_mask`` to match)."""
        rows = _rows(input_ids, inputs_embeds)
        call = place(self.virtual_tokens, "encoder", self.encoder, rows, attention_mask, cache)
        if call is None:
            return super().encode(input_ids, attention_mask, inputs_embeds=inputs_embeds, cache=cache)
        if call.embeddings is not None:
            inputs_embeds, input_ids = call.insert(embedded(self.embed, input_ids, inputs_embeds)), None
        return super().encode(input_ids, call.attention_mask, inputs_embeds=inputs_embeds, cache=call.cache)

    def decode(
        self, decoder_input_ids, memory, attention_mask=None, decoder_attention_mask=None, cache=None, *,
        decoder_inputs_embeds=None,
    ) -> torch.Tensor:
        attention_mask = self._memory_padding(memory, attention_mask)
        rows = _rows(decoder_input_ids, decoder_inputs_embeds)
        call = place(self.virtual_tokens, "decoder", self.decoder, rows, decoder_attention_mask, cache)
        if call is None:
            return super().decode(
                decoder_input_ids, memory, attention_mask, decoder_attention_mask, cache,
                decoder_inputs_embeds=decoder_inputs_embeds,
            )
        if call.embeddings is not None:
            decoder_inputs_embeds = call.insert(embedded(self.embed, decoder_input_ids, decoder_inputs_embeds))
            decoder_input_ids = None
        logits = super().decode(
            decoder_input_ids, memory, attention_mask, call.attention_mask, call.cache,
            decoder_inputs_embeds=decoder_inputs_embeds,
        )
        return call.output(logits)

    def _memory_padding(self, memory: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor | None:
        """The padding mask over the encoder's output: when the encoder took soft prompts, ``memory``
        holds them too, where ``encode`` put them, and the caller's mask (over the real tokens) is
        extended to match. Any other mismatch is left for ``decode`` to refuse."""
        virtual = self.virtual_tokens
        if attention_mask is None or virtual is None:
            return attention_mask
        extra = memory.shape[1] - attention_mask.shape[1]
        if extra and extra == virtual.num_virtual_tokens("encoder"):
            return Placement(extra, attention_mask).extend(attention_mask)
        return attention_mask


#: each torch LM class of ``nn.lm``, and the class it becomes with virtual tokens
WITH_VIRTUAL_TOKENS = {
    DecoderLM: DecoderLMWithVirtualTokens,
    EncoderLM: EncoderLMWithVirtualTokens,
    EncoderDecoderLM: EncoderDecoderLMWithVirtualTokens,
}


def virtual_token_host(model: nn.Module) -> nn.Module:
    """The torch LM that takes virtual tokens: ``model`` itself, or the LM it holds as ``.model``
    (a LanguageModel), so methods can be applied to either."""
    for candidate in (model, getattr(model, "model", None)):
        if type(candidate) in WITH_VIRTUAL_TOKENS or type(candidate) in WITH_VIRTUAL_TOKENS.values():
            return candidate
    raise ConfigError(
        f"{type(model).__name__} cannot take virtual tokens; use a model from llm_modules.nn.lm "
        "(DecoderLM, EncoderLM, EncoderDecoderLM) or a LanguageModel that holds one"
    )


def install(model: nn.Module, method: str, virtual: VirtualTokens) -> None:
    """Make ``virtual`` the model's virtual tokens; one virtual-token method per model."""
    host = virtual_token_host(model)
    present = getattr(host, "virtual_tokens", None)
    if present is not None:
        raise ConfigError(
            f"peft {method}: the model already has virtual tokens ({type(present).__name__}); "
            "apply one prompt/ptuning/prefix method per model"
        )
    host.__class__ = WITH_VIRTUAL_TOKENS.get(type(host), type(host))
    host.virtual_tokens = virtual


def virtual_tokens_of(model: nn.Module) -> VirtualTokens | None:
    """The virtual tokens installed on ``model`` (or on the torch LM it holds), or None."""
    return getattr(virtual_token_host(model), "virtual_tokens", None)


def virtual_tokens_disabled(model: nn.Module) -> AbstractContextManager[None]:
    """The model reads its real tokens alone for the block (the base function)."""
    return switched_off([virtual_tokens_of(model)])
