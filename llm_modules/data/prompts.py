"""PromptDataModule and GenerationWriter: ``llm-modules predict`` writes generations for a prompts file.

    llm-modules predict --ckpt_path last.ckpt --data llm_modules.data.PromptDataModule \\
        --data.prompts_file prompts.txt --data.output generations.jsonl --data.generation '{max_new_tokens: 64}'

The data module reads the prompts (one per line, or JSONL records with a ``prompt`` field),
tokenizes them with the model's own tokenizer and yields left-padded batches; the model's
``predict_step`` generates for them; the writer (added by the CLI for a data module with an
``output``) writes one JSON record per prompt, in the file's order, atomically. The generation
options live here, with the prompts, because they describe this prediction run rather than the
model: the same checkpoint is sampled with different settings for different prompt sets.
Single process: with several, each process would write its own share (not supported here).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader

from llm_modules.data.tokenizer import Tokenizer
from llm_modules.generation.config import GenerationConfig
from llm_modules.generation.prompts import left_pad, read_prompts
from llm_modules.registry import ConfigError


class PromptDataModule(L.LightningDataModule):
    """Prompts to continue, for ``predict``.

    Args:
        prompts_file: one prompt per line, or ``.jsonl`` records with a ``field`` text.
        output: where the GenerationWriter writes the JSONL results (None: keep them in memory only).
        generation: ``generate`` options (GenerationConfig fields: max_new_tokens, do_sample, top_p, num_beams, ...).
        tokenizer: a SentencePiece ``.model``; default: the model's own (kept in its checkpoint).
        batch_size: prompts per batch.
        field: the JSONL record's prompt field.
    """

    def __init__(
        self,
        prompts_file: str,
        output: str | None = None,
        generation: dict[str, Any] | None = None,
        tokenizer: str | None = None,
        batch_size: int = 8,
        field: str = "prompt",
    ):
        super().__init__()
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"data.batch_size={batch_size!r} must be a positive integer")
        self.prompts_file, self.output, self.field, self.batch_size = prompts_file, output, field, batch_size
        self.generation = dict(generation or {})
        GenerationConfig(**{k: v for k, v in self.generation.items() if k in _CONFIG_FIELDS})  # checked now
        unknown = sorted(set(self.generation) - _CONFIG_FIELDS)
        if unknown:
            raise ConfigError(f"data.generation: unknown option(s) {unknown}; options: {sorted(_CONFIG_FIELDS)}")
        self.tokenizer = Tokenizer.load(tokenizer, field="data.tokenizer") if tokenizer else None
        self.prompts = read_prompts(prompts_file, field)

    def predict_dataloader(self) -> DataLoader:
        # The model's tokenizer is known only once Lightning has restored the checkpoint, after setup.
        model = getattr(self.trainer, "lightning_module", None) if getattr(self, "trainer", None) else None
        tokenizer = self.tokenizer or getattr(model, "tokenizer", None)
        if tokenizer is None:
            raise ConfigError("data.tokenizer: give a SentencePiece .model path; the model carries no tokenizer")
        pad = model.config.pad_token_id if model is not None else tokenizer.pad_id
        bos = model is not None and model.config.bos_token_id is not None and tokenizer.bos_id >= 0
        rows = [(i, text, tokenizer.encode(text, bos=bos)) for i, text in enumerate(self.prompts)]
        empty = [i + 1 for i, _, ids in rows if not ids]
        if empty and getattr(model, "kind", None) != "Seq2SeqLM":
            raise ConfigError(f"{self.prompts_file}: prompt {empty[0]} encodes to no tokens; a decoder needs at "
                              "least one token to continue from")

        def collate(items):
            ids, mask = left_pad([r[2] for r in items], pad)
            return {"prompt_ids": ids, "prompt_mask": mask, "prompt_index": [r[0] for r in items],
                    "prompts": [r[1] for r in items]}

        return DataLoader(rows, batch_size=self.batch_size, shuffle=False, collate_fn=collate)


_CONFIG_FIELDS = set(GenerationConfig.__dataclass_fields__)


def generate_for_prompts(lm, batch: dict, options: dict[str, Any]) -> list[dict[str, Any]]:
    """One record per prompt of a PromptDataModule batch: its index, text, generation and new token ids."""
    from llm_modules.generation.prompts import new_tokens

    tokenizer = lm.tokenizer
    out = lm.generate(batch["prompt_ids"], batch["prompt_mask"], tokenizer=tokenizer, **options)
    eos = options.get("eos_token_id")
    if eos is None:  # generate's own default
        eos = lm.config.eos_token_id if lm.config.eos_token_id is not None else getattr(tokenizer, "eos_id", -1)
    stops = [t for t in ([eos] if isinstance(eos, int) else eos) if t >= 0]
    rows = new_tokens(lm, out.cpu(), batch["prompt_ids"].shape[1], stops, lm.config.pad_token_id)
    return [
        {"index": i, "prompt": p, "generation": tokenizer.decode(t) if tokenizer is not None else "", "tokens": t}
        for i, p, t in zip(batch["prompt_index"], batch["prompts"], rows)
    ]


class GenerationWriter(BasePredictionWriter):
    """Writes ``predict``'s generation records as JSONL, in prompt order, once the run ends (atomically)."""

    def __init__(self, output: str):
        super().__init__(write_interval="epoch")
        self.output = Path(output)
        if self.output.is_dir():
            raise ConfigError(f"data.output {output!r} is a folder; give a file name such as generations.jsonl")

    def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices) -> None:
        records = sorted((r for batch in predictions for r in batch), key=lambda r: r["index"])
        text = "".join(json.dumps({k: v for k, v in r.items() if k != "index"}, ensure_ascii=False) + "\n"
                       for r in records)
        self.output.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.output.with_name(f".{self.output.name}.tmp-{os.getpid()}")
        try:
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, self.output)
        finally:
            tmp.unlink(missing_ok=True)
        print(f"wrote {len(records)} generation(s) to {self.output}")
