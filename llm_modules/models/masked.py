"""MaskedLM: encoder-only (BERT), predicting masked tokens from both sides."""

from __future__ import annotations

from llm_modules.models.base import LanguageModel


class MaskedLM(LanguageModel):
    """Encoder-only LM. ``lm(input_ids, attention_mask=None, token_type_ids=None) -> logits``.

    Batch: ``input_ids`` (with mask tokens already placed), ``labels`` (the original token where a
    loss is taken, IGNORE_INDEX elsewhere), optional ``attention_mask``, ``token_type_ids`` and
    ``document_ids`` (packed documents that must not see each other, ``data.document_mask``).
    """

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, document_ids=None):
        return self.model(input_ids, attention_mask, token_type_ids, document_ids=document_ids)

    pipeline_ready = True

    def logits_and_targets(self, batch):
        ids, targets, inputs = self.pipeline_batch(batch)
        return self(ids, **inputs), targets

    def pipeline_batch(self, batch):
        inputs = {name: batch.get(name) for name in ("attention_mask", "token_type_ids", "document_ids")}
        return batch["input_ids"], batch["labels"], inputs
