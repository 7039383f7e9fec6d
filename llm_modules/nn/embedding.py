"""Token embeddings (with optional token types) and the output head."""

from __future__ import annotations

import torch
from torch import nn

from llm_modules.nn.linear import Linear


class TokenEmbedding(nn.Module):
    """Token (and optional token-type, BERT) embeddings.

    ``grad_scale`` < 1 is GLM-130B's embedding gradient shrink: the forward value is unchanged, but
    only that fraction of the gradient reaches the table, ``a*e + (1-a)*e.detach()``, which damps
    the loss spikes that embedding-gradient bursts cause early in large-model training.
    """

    def __init__(self, vocab_size: int, d_model: int, type_vocab_size: int = 0, grad_scale: float = 1.0):
        super().__init__()
        self.tokens = nn.Embedding(vocab_size, d_model)
        self.types = nn.Embedding(type_vocab_size, d_model) if type_vocab_size else None
        self.grad_scale = grad_scale

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        vocab = self.tokens.num_embeddings
        # Checked on CPU only: on a GPU the check would cost a device sync every step; and not while
        # torch.compile traces (reading the values would split the graph; the lookup still fails).
        if (input_ids.device.type == "cpu" and input_ids.numel() and not torch.compiler.is_compiling()
                and (int(input_ids.min()) < 0 or int(input_ids.max()) >= vocab)):
            raise ValueError(
                f"input_ids hold ids outside [0, {vocab}); the tokenizer and the model's vocab_size disagree"
            )
        x = self.tokens(input_ids)
        if self.types is not None:
            x = x + self.types(torch.zeros_like(input_ids) if token_type_ids is None else token_type_ids)
        if self.grad_scale != 1.0:
            x = self.grad_scale * x + (1.0 - self.grad_scale) * x.detach()
        return x


class LMHead(nn.Module):
    """Hidden states to vocabulary logits.

    ``transform`` adds BERT's prediction transform (dense, GELU, norm) before the projection;
    ``tied_to`` shares the projection with the token embedding table; ``scale`` multiplies the hidden
    state first (T5 with tied embeddings uses d_model^-0.5); ``softcap`` bounds the logits to
    (-cap, cap) by ``cap * tanh(logits / cap)`` (Gemma 2).
    """

    #: the math ``nn.decode_step`` reproduces for this class itself (a subclass declares its own)
    lean_decode = "lm-head"

    def __init__(
        self,
        d_model: int,
        vocab_size: int,
        *,
        bias: bool = False,
        transform_norm: nn.Module | None = None,
        tied_to: nn.Embedding | None = None,
        scale: float = 1.0,
        softcap: float | None = None,
    ):
        super().__init__()
        self.transform = None
        if transform_norm is not None:
            self.transform = nn.Sequential(Linear(d_model, d_model), nn.GELU(), transform_norm)
        self.proj = Linear(d_model, vocab_size, bias=bias)
        if tied_to is not None:
            self.proj.weight = tied_to.weight
        self.scale = scale
        self.softcap = softcap

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.transform is not None:
            h = self.transform(h)
        if self.scale != 1.0:
            h = h * self.scale
        logits = self.proj(h)
        if self.softcap is not None:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits
