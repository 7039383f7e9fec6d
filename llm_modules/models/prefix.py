"""PrefixLM: a decoder whose prefix attends bidirectionally; loss only on the tokens after it."""

from __future__ import annotations

from llm_modules.models.base import IGNORE_INDEX, LanguageModel, shift_targets
from llm_modules.models.causal import within_documents
from llm_modules.nn.mask_inputs import positions_from


class PrefixLM(LanguageModel):
    """Prefix decoder (UniLM, GLM, U-PaLM). ``lm(input_ids, attention_mask=None, prefix_lengths=None)``.

    ``prefix_lengths`` (B,) counts the leading real tokens of each row (left padding is not
    counted) that see each other in both directions; later tokens see only the past. Without it
    the model is a plain causal decoder.
    Loss is taken only on tokens after the prefix (predicting token t needs t >= prefix length).
    """

    def forward(self, input_ids, attention_mask=None, prefix_lengths=None, document_ids=None):
        """``document_ids`` (packed documents) only without ``prefix_lengths``: a prefix is per row."""
        return self.model(input_ids, attention_mask, prefix_lengths, document_ids=document_ids)

    pipeline_ready = True

    def logits_and_targets(self, batch):
        ids, targets, inputs = self.pipeline_batch(batch)
        return self(ids, **inputs), targets

    def pipeline_batch(self, batch):
        ids, mask, prefix = batch["input_ids"], batch.get("attention_mask"), batch.get("prefix_lengths")
        documents = batch.get("document_ids")
        targets = batch.get("labels")
        if targets is None:
            targets = within_documents(shift_targets(ids, mask), documents)
            if prefix is not None:
                # Logit t predicts the next token; it is inside the prefix when its position < prefix.
                # Positions count real tokens (as the attention mask does), so left padding does not
                # move the prefix boundary.
                position = positions_from(mask, ids.shape[0], ids.shape[1], ids.device)
                targets = targets.masked_fill(position + 1 < prefix.unsqueeze(1), IGNORE_INDEX)
        return ids, targets, {"attention_mask": mask, "prefix_lengths": prefix, "document_ids": documents}
