"""RLPromptDataModule: prompts as training batches, for on-policy training (PPO).

On-policy methods train on what the model itself generates, so a training batch is a batch of
prompts, not of text: PPO samples a response to each and scores it. The prompts file is the one
``PromptDataModule`` reads for ``predict`` (one prompt per line, or JSONL records with a
``prompt`` field), tokenized the same way (with the model's own tokenizer, left-padded), so the
same file serves training and a look at the results; the batches are
``{"prompt_ids", "prompt_mask", "prompts", "prompt_index"}``.

Training batches are shuffled from a generator seeded with ``seed``; ``val_prompts_file`` (optional) holds prompts whose rollouts are scored at
each validation (``val/reward``), in file order.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from llm_modules.data.prompts import PromptDataModule
from llm_modules.registry import ConfigError


class RLPromptDataModule(PromptDataModule):
    """Prompts to sample from in training.

    Args:
        prompts_file: the training prompts (one per line, or ``.jsonl`` records with a ``field`` text).
        val_prompts_file: prompts scored at each validation (None: no validation).
        tokenizer: a SentencePiece ``.model`` or a ``tokenizer.json``; default: the model's own.
        batch_size: prompts per training batch: the rollout batch.
        field: the JSONL records' prompt field.
        seed: the shuffling seed.
    """

    def __init__(self, prompts_file: str, val_prompts_file: str | None = None, tokenizer: str | None = None,
                 batch_size: int = 8, field: str = "prompt", seed: int = 0):
        super().__init__(prompts_file, output=None, generation=None, tokenizer=tokenizer, batch_size=batch_size,
                         field=field)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ConfigError(f"data.seed={seed!r} must be an integer")
        self.seed = seed
        self.validation = (PromptDataModule(val_prompts_file, tokenizer=tokenizer, batch_size=batch_size, field=field)
                           if val_prompts_file else None)
        if self.validation is not None:
            self.validation.tokenizer = self.tokenizer  # read once

    def train_dataloader(self) -> DataLoader:
        return self._loader(self, shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        return self._loader(self.validation, shuffle=False) if self.validation is not None else []

    def _loader(self, source: PromptDataModule, shuffle: bool) -> DataLoader:
        """``source``'s prompts, tokenized and batched as for ``predict`` (PromptDataModule), shuffled
        or not. The model, and so its tokenizer, is known only once the trainer holds it."""
        source.trainer = self.trainer
        loader = source.predict_dataloader()
        generator = torch.Generator().manual_seed(self.seed) if shuffle else None
        return DataLoader(loader.dataset, batch_size=self.batch_size, shuffle=shuffle, generator=generator,
                          collate_fn=loader.collate_fn)
