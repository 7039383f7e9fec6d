"""The torch models behind the four LM kinds, usable without Lightning (export, inference)."""

from __future__ import annotations

import torch
from torch import nn

from llm_modules.nn.embedding import LMHead, TokenEmbedding
from llm_modules.nn.init import init_weights
from llm_modules.nn.kv_cache import KVCache
from llm_modules.nn.mask_inputs import MaskInputs, self_attention_mask
from llm_modules.nn.masks import AttentionMask
from llm_modules.nn.moe import pooled_balance_loss
from llm_modules.nn.residual import deepnorm_constants
from llm_modules.nn.transformer import Stack, build_norm


def embedded(embed: TokenEmbedding, input_ids, inputs_embeds, token_type_ids=None) -> torch.Tensor:
    """A stack's input (B, T, D): the embedded ``input_ids``, or ``inputs_embeds`` given instead,
    vectors made outside the model that enter the stack as embedded tokens do (token types
    included, so they come with neither ids nor types)."""
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("pass either input_ids or inputs_embeds, not both and not neither")
    if inputs_embeds is not None and token_type_ids is not None:
        raise ValueError("token_type_ids go with input_ids; inputs_embeds already hold their token types")
    return embed(input_ids, token_type_ids) if inputs_embeds is None else inputs_embeds


def run_stack(cfg, stack: Stack, x: torch.Tensor, inputs: MaskInputs, memory=None, memory_mask=None) -> torch.Tensor:
    """``stack`` over embedded tokens ``x``; a cache then holds ``x``'s positions too."""
    mask, positions = self_attention_mask(cfg, inputs, x)
    hidden = stack(x, mask, positions, memory, memory_mask, cache=inputs.cache)
    if inputs.cache is not None:
        inputs.cache.length += x.shape[1]
    return hidden


def aux_loss(model: nn.Module, attention_mask: torch.Tensor | None = None) -> torch.Tensor | None:
    """Sum of the auxiliary losses (MoE load balancing) left by the last forward, or None: each
    module's own ``aux_loss``, and the loss pooled over MoE layers (``nn.moe.pooled_balance_loss``),
    which leaves out the padding of ``attention_mask``, the batch's (B, T) mask."""
    losses = [m.aux_loss for m in model.modules() if isinstance(getattr(m, "aux_loss", None), torch.Tensor)]
    pooled = pooled_balance_loss(model, attention_mask)
    losses += [] if pooled is None else [pooled]
    return torch.stack([l.float() for l in losses]).sum() if losses else None


class StackedLM(nn.Module):
    """What every torch LM answers about its parts, so that training, data and estimation code asks
    the model instead of searching its modules for component types: its stacks (named by
    ``stack_names``, in data-flow order), their position encodings, and the longest sequence those
    allow."""

    stack_names: tuple[str, ...] = ()

    def stacks(self) -> list[Stack]:
        return [getattr(self, name) for name in self.stack_names]

    def position_encodings(self) -> list[nn.Module]:
        """Each stack's position encoding, once (a shared one counts once)."""
        return list({id(s.position): s.position for s in self.stacks()}.values())

    @property
    def max_positions(self) -> int | None:
        """The longest sequence every stack's position encoding can represent (None: unbounded)."""
        limits = [p.max_len for p in self.position_encodings() if p.max_len is not None]
        return min(limits) if limits else None


class _SingleStackLM(StackedLM):
    """Embedding -> one stack -> head; subclasses choose the mask."""

    causal: bool
    #: the stacks by attribute name, the one that reads the input first
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
            softcap=cfg.logit_softcap,
        )
        init_weights(self, cfg.init_std, cfg.n_layers)

    def hidden(
        self, input_ids=None, attention_mask=None, prefix_lengths=None, token_type_ids=None,
        cache: KVCache | None = None, document_ids=None, *, inputs_embeds=None,
    ) -> torch.Tensor:
        """The stack's output (B, T, D) over ``input_ids`` (or ``inputs_embeds``, see ``embedded``)."""
        x = embedded(self.embed, input_ids, inputs_embeds, token_type_ids)
        inputs = MaskInputs(self.causal, attention_mask, prefix_lengths, cache, document_ids)
        return run_stack(self.config, self.stack, x, inputs)


class DecoderLM(_SingleStackLM):
    """Decoder-only LM (GPT, LLaMA). With ``prefix_lengths`` the first tokens of each row attend to
    each other bidirectionally (prefix decoder: UniLM, GLM, U-PaLM)."""

    #: the math ``nn.decode_step`` reproduces for this class itself (a subclass declares its own)
    lean_decode = "decoder"

    causal = True

    def __init__(self, cfg, *, prefix: bool = False):
        super().__init__(cfg, bidirectional_positions=prefix)
        self.prefix = prefix

    def forward(
        self, input_ids=None, attention_mask=None, prefix_lengths=None, cache: KVCache | None = None,
        document_ids=None, *, inputs_embeds=None,
    ) -> torch.Tensor:
        """Logits (B, T, V). With a ``cache`` (decoding), ``input_ids`` are the tokens after the
        cached ones and ``attention_mask`` covers cached and new tokens (``nn.mask_inputs``).
        ``document_ids`` (B, T): packed documents that must not attend to each other."""
        hidden = self.hidden(
            input_ids, attention_mask, prefix_lengths, cache=cache, document_ids=document_ids,
            inputs_embeds=inputs_embeds,
        )
        return self.head(hidden)


class EncoderLM(_SingleStackLM):
    """Encoder-only LM (BERT): bidirectional attention, optional token types."""

    causal = False

    def __init__(self, cfg):
        super().__init__(cfg, bidirectional_positions=True)

    def forward(
        self, input_ids=None, attention_mask=None, token_type_ids=None, document_ids=None, *, inputs_embeds=None
    ) -> torch.Tensor:
        """Logits (B, T, V); ``document_ids`` (B, T) as in ``DecoderLM.forward``."""
        hidden = self.hidden(
            input_ids, attention_mask, token_type_ids=token_type_ids, document_ids=document_ids,
            inputs_embeds=inputs_embeds,
        )
        return self.head(hidden)


class EncoderDecoderLM(StackedLM):
    """Encoder-decoder LM (T5, BART): bidirectional encoder, causal decoder with cross-attention.

    The token embedding is shared by both stacks (and by the head when embeddings are tied).
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
            softcap=cfg.logit_softcap,
        )
        init_weights(self, cfg.init_std, cfg.encoder_layers + cfg.n_layers)

    def encode(self, input_ids=None, attention_mask=None, *, inputs_embeds=None, cache: KVCache | None = None):
        """The encoder output (B, T, D). ``cache``: keys/values of earlier positions that every
        encoder self-attention attends to as well (``attention_mask`` then covers them too)."""
        x = embedded(self.embed, input_ids, inputs_embeds)
        return run_stack(self.config, self.encoder, x, MaskInputs(False, attention_mask, cache=cache))

    def decode(
        self, decoder_input_ids, memory, attention_mask=None, decoder_attention_mask=None,
        cache: KVCache | None = None, *, decoder_inputs_embeds=None,
    ) -> torch.Tensor:
        """Decoder logits over ``memory`` (the encoder output, ``attention_mask`` its padding). With
        a ``cache``, as in ``DecoderLM.forward``: new decoder tokens only, the decoder mask covering
        cached and new; the cross-attention keys/values of ``memory`` are projected once and kept."""
        if attention_mask is not None and attention_mask.shape[1] != memory.shape[1]:
            raise ValueError(
                f"the encoder output has {memory.shape[1]} positions but attention_mask covers "
                f"{attention_mask.shape[1]}; pass the mask that was given to encode"
            )
        x = embedded(self.embed, decoder_input_ids, decoder_inputs_embeds)
        padding = None if attention_mask is None else attention_mask.bool()
        memory_mask = AttentionMask(x.shape[1], memory.shape[1], key_padding=padding)
        inputs = MaskInputs(True, decoder_attention_mask, cache=cache)
        return self.head(run_stack(self.config, self.decoder, x, inputs, memory, memory_mask))

    def forward(self, input_ids, attention_mask=None, decoder_input_ids=None, decoder_attention_mask=None):
        if decoder_input_ids is None:
            raise ValueError("Seq2SeqLM needs decoder_input_ids (the shifted-right targets)")
        memory = self.encode(input_ids, attention_mask)
        return self.decode(decoder_input_ids, memory, attention_mask, decoder_attention_mask)


def count_parameters(model: nn.Module) -> int:
    """Distinct parameters (a tied embedding/head counts once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
