"""CausalLM: decoder-only, next-token prediction (GPT, LLaMA, BLOOM, PaLM)."""

from __future__ import annotations

from llm_modules.models.base import LanguageModel, shift_targets
from llm_modules.nn.lm import DecoderLM


class CausalLM(LanguageModel):
    """Decoder-only LM. ``lm(input_ids, attention_mask=None) -> logits (B, T, vocab)``.

    Batch: ``input_ids``, optional ``attention_mask`` (1 = real token), optional ``labels``
    (already aligned with the logits, IGNORE_INDEX where no loss is taken); by default the
    targets are the inputs shifted by one.
    """

    def build_model(self, config):
        return DecoderLM(config)

    def forward(self, input_ids, attention_mask=None):
        return self.model(input_ids, attention_mask)

    def logits_and_targets(self, batch):
        mask = batch.get("attention_mask")
        targets = batch.get("labels")
        if targets is None:
            targets = shift_targets(batch["input_ids"], mask)
        return self(batch["input_ids"], mask), targets



