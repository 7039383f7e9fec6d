"""CausalLM: decoder-only, next-token prediction (GPT, LLaMA, BLOOM, PaLM)."""

from __future__ import annotations

import torch

from llm_modules.models.base import IGNORE_INDEX, LanguageModel, shift_targets


class CausalLM(LanguageModel):
    """Decoder-only LM. ``lm(input_ids, attention_mask=None) -> logits (B, T, vocab)``.

    Batch: ``input_ids``, optional ``attention_mask`` (1 = real token), optional ``labels``
    (already aligned with the logits, IGNORE_INDEX where no loss is taken), optional
    ``document_ids`` (packed documents, ``data.document_mask``); by default the targets are the
    inputs shifted by one, never across a document boundary (``within_documents``).
    """

    def forward(self, input_ids, attention_mask=None, document_ids=None):
        return self.model(input_ids, attention_mask, document_ids=document_ids)

    pipeline_ready = True

    def logits_and_targets(self, batch):
        ids, targets, inputs = self.pipeline_batch(batch)
        return self(ids, **inputs), targets

    def pipeline_batch(self, batch):
        mask, documents = batch.get("attention_mask"), batch.get("document_ids")
        targets = batch.get("labels")
        if targets is None:
            targets = within_documents(shift_targets(batch["input_ids"], mask), documents)
        return batch["input_ids"], targets, {"attention_mask": mask, "document_ids": documents}


def within_documents(targets: torch.Tensor, document_ids: torch.Tensor | None) -> torch.Tensor:
    """Drop the next-token targets that cross into another document.

    With document masking the last token of a document (its EOS) sees only its own document, so
    the first token of the next one is not predictable from anything it sees; keeping that target
    would add a loss term that depends on which documents happened to be packed together. So a
    document's loss terms are exactly those it has alone in a row (EOS included as a target).
    """
    if document_ids is None:
        return targets
    crosses = torch.zeros_like(document_ids, dtype=torch.bool)
    crosses[:, :-1] = document_ids[:, 1:] != document_ids[:, :-1]
    return targets.masked_fill(crosses, IGNORE_INDEX)



