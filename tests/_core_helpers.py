"""Shared helpers for the core (nn/ and models/) tests: tiny configs, one forward call for all LM kinds,
and tiny batches that each LM kind's ``compute_loss`` accepts.

Kept in one place so that every core test builds models the same way (d_model 32, 2 layers, 4 heads,
vocab 50) and so a change in a forward signature breaks one helper, not forty tests.
"""

from __future__ import annotations

import torch

from llm_modules import CausalLM, MaskedLM, ModelConfig, PrefixLM, Seq2SeqLM
from llm_modules.registry import MODEL_REGISTRIES

KINDS = {"CausalLM": CausalLM, "PrefixLM": PrefixLM, "Seq2SeqLM": Seq2SeqLM, "MaskedLM": MaskedLM}

VOCAB = 50
MASK_ID = 1  # token used for [MASK] in MaskedLM batches
PAD_ID = 0


def builtin_names(slot: str) -> list[str]:
    """The names llm-modules itself registers in a model slot, read from the registry (plugins, whose
    presence depends on the environment, are left out; the contract tests cover them)."""
    return [e.name for e in MODEL_REGISTRIES[slot].entries() if e.provider == "llm_modules"]


#: position settings used across the tests: every built-in encoding, and RoPE rotating interleaved
#: pairs of half of each head
POSITIONS = {
    **{name: name for name in builtin_names("position")},
    "rope_interleaved_partial": {"name": "rope", "interleaved": True, "fraction": 0.5},
}


def tiny_config(**overrides) -> ModelConfig:
    """The tiny architecture every core test starts from (fp32, no dropout)."""
    fields = dict(
        vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=4, max_seq_len=32, attention="eager",
        position="learned", dropout=0.0, attention_dropout=0.0,
    )
    fields.update(overrides)
    return ModelConfig(**fields)


def build(kind: str, seed: int = 0, **overrides):
    """A tiny LM of the given kind in eval mode, with a fixed seed so two builds share weights."""
    torch.manual_seed(seed)
    return KINDS[kind](tiny_config(**overrides)).eval()


def same_weights(lm, kind: str, **overrides):
    """A second LM of the same kind with other settings (e.g. another backend) and lm's weights."""
    other = KINDS[kind](tiny_config(**overrides)).eval()
    other.load_state_dict(lm.state_dict())
    return other


def run(lm, ids, attention_mask=None, *, prefix_lengths=None, decoder_ids=None, decoder_mask=None):
    """Logits of any LM kind. Seq2SeqLM: ``ids`` feed the encoder and ``decoder_ids`` (default: ``ids``)
    the decoder; PrefixLM takes ``prefix_lengths``; the other kinds ignore what they do not use."""
    if isinstance(lm, Seq2SeqLM):
        dec = ids if decoder_ids is None else decoder_ids
        dmask = attention_mask if decoder_ids is None and decoder_mask is None else decoder_mask
        return lm(ids, attention_mask, decoder_input_ids=dec, decoder_attention_mask=dmask)
    if isinstance(lm, PrefixLM):
        return lm(ids, attention_mask, prefix_lengths)
    return lm(ids, attention_mask)


def pattern_ids(batch: int = 4, length: int = 16, period: int = 6) -> torch.Tensor:
    """A tiny repeating token pattern (2, 3, ..., period+1, 2, ...), a different phase per row."""
    offsets = torch.arange(batch).unsqueeze(1)
    return (torch.arange(length).unsqueeze(0) + offsets) % period + 2


def training_batch(kind: str, batch: int = 4, length: int = 16) -> dict[str, torch.Tensor]:
    """A batch for ``compute_loss`` of each kind, built from ``pattern_ids``.

    - CausalLM: next-token targets come from the inputs.
    - PrefixLM: per-row prefix lengths; the loss is on the tokens after the prefix.
    - Seq2SeqLM: copy task (labels = inputs); the decoder reads the labels shifted right.
    - MaskedLM: every fourth position (a different phase per row) replaced by MASK_ID, labels there
      and -100 elsewhere.
    """
    ids = pattern_ids(batch, length)
    if kind == "CausalLM":
        return {"input_ids": ids}
    if kind == "PrefixLM":
        return {"input_ids": ids, "prefix_lengths": torch.arange(batch) % 4 + 3}
    if kind == "Seq2SeqLM":
        return {"input_ids": ids, "labels": ids.clone()}
    masked = (torch.arange(length).unsqueeze(0) + torch.arange(batch).unsqueeze(1)) % 4 == 0
    labels = torch.where(masked, ids, torch.full_like(ids, -100))
    return {"input_ids": ids.masked_fill(masked, MASK_ID), "labels": labels}


def left_padded(lengths, seed=0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random prompts (ids from 2 up, pad id 0) of the given lengths, left-padded to the longest, and
    their attention mask: how generation takes a batch of prompts."""
    generator = torch.Generator().manual_seed(seed)
    total = max(lengths)
    ids = torch.randint(2, VOCAB, (len(lengths), total), generator=generator)
    mask = (torch.arange(total).unsqueeze(0) >= (total - torch.tensor(lengths)).unsqueeze(1)).long()
    return ids.masked_fill(mask == 0, 0), mask
