"""The torch models behind the four LM kinds, usable without Lightning (export, inference)."""

from __future__ import annotations

import torch
from torch import nn

from llm_modules.nn.documents import check_document_ids, restart_positions
from llm_modules.nn.embedding import LMHead, TokenEmbedding
from llm_modules.nn.init import init_weights
from llm_modules.nn.kv_cache import KVCache
from llm_modules.nn.masks import AttentionMask
from llm_modules.nn.residual import deepnorm_constants
from llm_modules.nn.transformer import Stack, build_norm
from llm_modules.nn.virtual_tokens import (
    VirtualTokens,
    memory_padding,
    place_virtual_tokens,
)


def positions_from(attention_mask: torch.Tensor | None, batch: int, length: int, device) -> torch.Tensor:
    """Position of each token among the real tokens of its row, so left padding does not shift them."""
    if attention_mask is None:
        return torch.arange(length, device=device).unsqueeze(0).expand(batch, length)
    return (attention_mask.long().cumsum(-1) - 1).clamp_min(0)


def mask_positions(attention_mask: torch.Tensor | None, positions: torch.Tensor) -> torch.Tensor | None:
    """Positions for the mask's structure (prefix, window, stride) when padding could shift them.

    Without an attention mask, index = position and the mask stays plain (fused causal kernels).
    """
    return None if attention_mask is None else positions


def padding_of(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    return None if attention_mask is None else attention_mask.bool()


def self_attention_mask(
    cfg, attention_mask: torch.Tensor | None, batch: int, new: int, device, *, causal: bool,
    prefix_lengths: torch.Tensor | None = None, cache: KVCache | None = None,
    document_ids: torch.Tensor | None = None, virtual_keys: int = 0,
) -> tuple[AttentionMask, torch.Tensor]:
    """The self-attention mask over ``new`` tokens, and their positions.

    Without a cache the new tokens are the whole sequence. With one, ``attention_mask`` covers the
    cached tokens and the new ones (B, past + new), the mask's keys span both and its queries start
    at the cached length, and the positions returned are the new tokens' only.
    ``virtual_keys`` more keys come before the new tokens without being cached yet (prefix tuning's
    key/value prefixes, ``nn.virtual_tokens``): they count as past, and the mask covers them too.
    ``document_ids`` (B, T) marks packed documents (``nn.documents``): attention stays inside a
    document and positions restart at each one. Training only: not with a cache or a prefix.
    """
    past = (cache.length if cache is not None else 0) + virtual_keys
    total = past + new
    if attention_mask is not None and attention_mask.shape[1] != total:
        raise ValueError(
            f"attention_mask covers {attention_mask.shape[1]} tokens; with {past} cached and {new} new "
            f"it must cover {total}"
        )
    positions = positions_from(attention_mask, batch, total, device)
    structure = mask_positions(attention_mask, positions)
    if document_ids is not None:
        if cache is not None or prefix_lengths is not None:
            raise ValueError(
                "document_ids (packed documents) cannot be combined with "
                + ("a KV cache: decode one document per row" if cache is not None
                   else "prefix_lengths: a prefix belongs to a row, not to a document; drop data.document_mask")
            )
        check_document_ids(document_ids, batch, total)
        positions = structure = restart_positions(positions, document_ids)
    mask = AttentionMask(
        new, total, causal=causal, prefix_lengths=prefix_lengths, key_padding=padding_of(attention_mask),
        window=cfg.sliding_window, stride=cfg.sparse_stride, q_offset=past, positions=structure,
        documents=document_ids,
    )
    return mask, positions[:, past:]


def aux_loss(model: nn.Module) -> torch.Tensor | None:
    """Sum of the auxiliary losses (MoE load balancing) left by the last forward, or None."""
    losses = [m.aux_loss for m in model.modules() if isinstance(getattr(m, "aux_loss", None), torch.Tensor)]
    return torch.stack([l.float() for l in losses]).sum() if losses else None


class _SingleStackLM(nn.Module):
    """Embedding -> one stack -> head; subclasses choose the mask.

    ``virtual_tokens`` (None: none) adds learned tokens in front of the real ones: soft prompts or
    key/value prefixes (``nn.virtual_tokens``, set by PEFT methods); logits stay one per real token.
    """

    causal: bool
    #: the stacks by attribute name, the one that reads ``input_ids`` first (``nn.virtual_tokens``)
    stack_names = ("stack",)

    def __init__(self, cfg, *, bidirectional_positions: bool):
        super().__init__()
        self.config = cfg
        self.embed = TokenEmbedding(cfg.vocab_size, cfg.d_model, cfg.type_vocab_size, cfg.embedding_grad_scale)
        layers = deepnorm_constants(0 if self.causal else cfg.n_layers, cfg.n_layers if self.causal else 0)
        self.stack = Stack(
            cfg, cfg.n_layers, cross=False, bidirectional=bidirectional_positions,
            deepnorm=layers["decoder" if self.causal else "encoder"], prefix=self.causal and bidirectional_positions,
        )
        self.head = LMHead(
            cfg.d_model, cfg.vocab_size, bias=cfg.lm_head_bias,
            transform_norm=build_norm(cfg) if cfg.head_transform else None,
            tied_to=self.embed.tokens if cfg.tie_embeddings else None, scale=cfg.output_scale,
        )
        init_weights(self, cfg.init_std, cfg.n_layers)
        self.virtual_tokens: VirtualTokens | None = None

    def hidden(
        self, input_ids, attention_mask=None, prefix_lengths=None, token_type_ids=None, cache: KVCache | None = None,
        document_ids=None,
    ) -> torch.Tensor:
        call = place_virtual_tokens(
            self.virtual_tokens, "stack", self.stack, self.embed(input_ids, token_type_ids), attention_mask, cache,
            document_ids,
        )
        batch, length = call.x.shape[:2]
        mask, positions = self_attention_mask(
            self.config, call.attention_mask, batch, length, input_ids.device, causal=self.causal,
            prefix_lengths=call.shift(prefix_lengths), cache=call.cache, document_ids=document_ids,
            virtual_keys=call.virtual_keys,
        )
        hidden = self.stack(call.x, mask, positions, cache=call.cache)
        if call.cache is not None:
            call.cache.length += length + call.virtual_keys
        return call.output(hidden)


class DecoderLM(_SingleStackLM):
    """Decoder-only LM (GPT, LLaMA). With ``prefix_lengths`` the first tokens of each row attend to
    each other bidirectionally (prefix decoder: UniLM, GLM, U-PaLM)."""

    causal = True

    def __init__(self, cfg, *, prefix: bool = False):
        super().__init__(cfg, bidirectional_positions=prefix)
        self.prefix = prefix

    def forward(
        self, input_ids, attention_mask=None, prefix_lengths=None, cache: KVCache | None = None, document_ids=None,
    ) -> torch.Tensor:
        """Logits (B, T, V). With a ``cache`` (decoding), ``input_ids`` are the tokens after the
        cached ones and ``attention_mask`` covers cached and new tokens (see ``self_attention_mask``).
        ``document_ids`` (B, T): packed documents that must not attend to each other."""
        return self.head(self.hidden(input_ids, attention_mask, prefix_lengths, cache=cache, document_ids=document_ids))


class EncoderLM(_SingleStackLM):
    """Encoder-only LM (BERT): bidirectional attention, optional token types."""

    causal = False

    def __init__(self, cfg):
        super().__init__(cfg, bidirectional_positions=True)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, document_ids=None) -> torch.Tensor:
        """Logits (B, T, V); ``document_ids`` (B, T) as in ``DecoderLM.forward``."""
        hidden = self.hidden(input_ids, attention_mask, token_type_ids=token_type_ids, document_ids=document_ids)
        return self.head(hidden)


class EncoderDecoderLM(nn.Module):
    """Encoder-decoder LM (T5, BART): bidirectional encoder, causal decoder with cross-attention.

    The token embedding is shared by both stacks (and by the head when embeddings are tied).
    ``virtual_tokens`` as in ``DecoderLM``: soft prompts lead the encoder's input and stay in its
    output (the decoder cross-attends to them); prefixes may serve both self-attention stacks.
    """

    stack_names = ("encoder", "decoder")

    def __init__(self, cfg):
        super().__init__()
        self.config = cfg
        self.embed = TokenEmbedding(cfg.vocab_size, cfg.d_model, cfg.type_vocab_size, cfg.embedding_grad_scale)
        constants = deepnorm_constants(cfg.encoder_layers, cfg.n_layers)
        self.encoder = Stack(cfg, cfg.encoder_layers, cross=False, bidirectional=True, deepnorm=constants["encoder"])
        self.decoder = Stack(cfg, cfg.n_layers, cross=True, bidirectional=False, deepnorm=constants["decoder"])
        self.head = LMHead(
            cfg.d_model, cfg.vocab_size, bias=cfg.lm_head_bias,
            tied_to=self.embed.tokens if cfg.tie_embeddings else None, scale=cfg.output_scale,
        )
        init_weights(self, cfg.init_std, cfg.encoder_layers + cfg.n_layers)
        self.virtual_tokens: VirtualTokens | None = None

    def encode(self, input_ids, attention_mask=None) -> torch.Tensor:
        """The encoder output (B, T, D); with soft prompts (B, P + T, D), the virtual tokens where
        ``nn.virtual_tokens`` places them (``decode`` extends the same ``attention_mask`` to match)."""
        call = place_virtual_tokens(self.virtual_tokens, "encoder", self.encoder, self.embed(input_ids), attention_mask, None)
        batch, length = call.x.shape[:2]
        mask, positions = self_attention_mask(
            self.config, call.attention_mask, batch, length, input_ids.device, causal=False, cache=call.cache,
            virtual_keys=call.virtual_keys,
        )
        return self.encoder(call.x, mask, positions, cache=call.cache)

    def decode(
        self, decoder_input_ids, memory, attention_mask=None, decoder_attention_mask=None, cache: KVCache | None = None
    ) -> torch.Tensor:
        """Decoder logits over ``memory`` (the encoder output). With a ``cache``, as in
        ``DecoderLM.forward``: new decoder tokens only, the decoder mask covering cached and new;
        the cross-attention keys/values of ``memory`` are projected once and kept in the cache."""
        call = place_virtual_tokens(
            self.virtual_tokens, "decoder", self.decoder, self.embed(decoder_input_ids), decoder_attention_mask, cache
        )
        batch, length = call.x.shape[:2]
        mask, positions = self_attention_mask(
            self.config, call.attention_mask, batch, length, decoder_input_ids.device, causal=True, cache=call.cache,
            virtual_keys=call.virtual_keys,
        )
        memory_padding_mask = memory_padding(self.virtual_tokens, memory, attention_mask)
        memory_mask = AttentionMask(length, memory.shape[1], key_padding=padding_of(memory_padding_mask))
        hidden = self.decoder(call.x, mask, positions, memory, memory_mask, cache=call.cache)
        if call.cache is not None:
            call.cache.length += length + call.virtual_keys
        return self.head(call.output(hidden))

    def forward(self, input_ids, attention_mask=None, decoder_input_ids=None, decoder_attention_mask=None):
        if decoder_input_ids is None:
            raise ValueError("Seq2SeqLM needs decoder_input_ids (the shifted-right targets)")
        memory = self.encode(input_ids, attention_mask)
        return self.decode(decoder_input_ids, memory, attention_mask, decoder_attention_mask)


def count_parameters(model: nn.Module) -> int:
    """Distinct parameters (a tied embedding/head counts once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
