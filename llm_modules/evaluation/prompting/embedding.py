"""``model_embedder(model)``: ``embed(texts) -> Tensor (N, D)`` from an llm-modules model's own states.

A text's vector is the mean of the model's final hidden states (the stack's output, before the LM
head) over its real tokens: ``model.model.hidden`` for the decoder and encoder LMs, the encoder's
output (``model.model.encode``) for encoder-decoders. Rows are right-padded and the padding is left
out of the mean, so a text's vector does not depend on the batch it is embedded in. Read-only: the
models are used as they are (eval mode, no gradients).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from llm_modules.padding import pad_sequences
from llm_modules.registry import ConfigError


def model_embedder(model, tokenizer=None, batch_size: int = 16,
                   max_length: int | None = None) -> Callable[[list[str]], torch.Tensor]:
    """``model``: an ``LLMModulesLM`` (lm-eval model) or an llm-modules ``LanguageModel``;
    ``tokenizer``: one with ``encode(text) -> ids`` (default: the model's own, encoding as the lm-eval
    model encodes its inputs, ``tok_encode``: with the BOS a Hugging Face folder's tokenizer adds)."""
    module = getattr(model, "module", model)
    if tokenizer is not None:
        encode = tokenizer.encode
    else:
        tokenizer = getattr(model, "tokenizer", None) or getattr(module, "tokenizer", None)
        if tokenizer is None:
            raise ConfigError("similarity: 'embedding' needs the model's tokenizer; this model carries none")
        encode = getattr(model, "tok_encode", tokenizer.encode)
    network = module.model
    if hasattr(network, "hidden"):
        states = network.hidden
    elif hasattr(network, "encode"):
        states = network.encode
    else:
        raise ConfigError(f"similarity: 'embedding' cannot read hidden states of a {type(network).__name__}; use bm25")
    limit = int(max_length or getattr(model, "max_length", None) or module.config.max_seq_len)
    pad = 0

    @torch.no_grad()
    def embed(texts: list[str]) -> torch.Tensor:
        device = next(network.parameters()).device
        vectors = []
        for start in range(0, len(texts), batch_size):
            rows = [list(encode(t))[:limit] for t in texts[start:start + batch_size]]
            rows = [r if r else [_filler(tokenizer)] for r in rows]
            ids, mask = pad_sequences(rows, pad)
            was_training = module.training
            module.eval()
            try:
                hidden = states(ids.to(device), attention_mask=mask.to(device)).float()
            finally:
                module.train(was_training)
            weights = mask.to(hidden.device, hidden.dtype).unsqueeze(-1)
            vectors.append(((hidden * weights).sum(1) / weights.sum(1)).cpu())
        return torch.cat(vectors) if vectors else torch.zeros(0, module.config.d_model)

    return embed


def _filler(tokenizer) -> int:
    """An empty text is embedded as its one end-of-text token (it has no other)."""
    for name in ("eos_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if isinstance(value, int) and value >= 0:
            return value
    return 0
