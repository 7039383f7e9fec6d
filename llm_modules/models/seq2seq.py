"""Seq2SeqLM: encoder-decoder (T5, BART) trained on input -> output pairs or span corruption."""

from __future__ import annotations

import torch

from llm_modules.models.base import IGNORE_INDEX, LanguageModel


def shift_right(labels: torch.Tensor, start_token_id: int) -> torch.Tensor:
    """Decoder inputs from targets: a start token, then the targets without their last token."""
    inputs = labels.new_full(labels.shape, start_token_id)
    inputs[:, 1:] = labels[:, :-1]
    return inputs.masked_fill(inputs == IGNORE_INDEX, start_token_id)


class Seq2SeqLM(LanguageModel):
    """Encoder-decoder LM. ``lm(input_ids, attention_mask=None, decoder_input_ids=..., decoder_attention_mask=None)``.

    Batch: ``input_ids``, ``labels`` (decoder targets, IGNORE_INDEX for padding), optional
    ``attention_mask`` and ``decoder_input_ids`` (default: labels shifted right after the pad token,
    T5's decoder start).
    """

    def forward(self, input_ids, attention_mask=None, decoder_input_ids=None, decoder_attention_mask=None):
        return self.model(input_ids, attention_mask, decoder_input_ids, decoder_attention_mask)

    def logits_and_targets(self, batch):
        labels = batch["labels"]
        decoder_inputs = batch.get("decoder_input_ids")
        if decoder_inputs is None:
            decoder_inputs = shift_right(labels, self.config.pad_token_id)
        logits = self(batch["input_ids"], batch.get("attention_mask"), decoder_inputs, batch.get("decoder_attention_mask"))
        return logits, labels
