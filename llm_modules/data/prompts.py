"""PromptDataModule and GenerationWriter: ``llm-modules predict`` writes generations for a prompts file.

    llm-modules predict --ckpt_path last.ckpt --data llm_modules.data.PromptDataModule \\
        --data.prompts_file prompts.txt --data.output generations.jsonl --data.generation '{max_new_tokens: 64}'

The data module reads the prompts (one per line, or JSONL records with a ``prompt`` field),
tokenizes them with the model's own tokenizer and yields left-padded batches; the model's
``predict_step`` generates for them; the writer (added by the CLI for a data module with an
``output``) writes one JSON record per prompt, in the file's order, atomically:
``{"prompt", "generation", "tokens"}`` as ``llm-modules generate --prompts-file`` writes them.

The generation options live here, with the prompts, rather than on the model: they describe this
prediction run, not the model (the same checkpoint is sampled with different settings for
different prompt sets), and a checkpoint alone then carries everything else the run needs. With
several processes each generates its share of the prompts; the writer gathers the records on the
first process, which writes the file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader

from llm_modules.generation.config import GenerationConfig
from llm_modules.generation.prompts import (
    continuation_text,
    encode_prompt,
    left_pad,
    new_tokens,
    read_prompts,
    stop_ids,
)
from llm_modules.atomic_files import write_text
from llm_modules.registry import ConfigError


class PromptDataModule(L.LightningDataModule):
    """Prompts to continue, for ``predict``.

    Args:
        prompts_file: one prompt per line, or ``.jsonl`` records with a ``field`` text.
        output: where the GenerationWriter writes the JSONL results (None: keep them in memory only).
        overwrite: replace ``output`` if it exists (otherwise ``predict`` refuses before generating).
        generation: ``generate`` options (GenerationConfig fields: max_new_tokens, do_sample, top_p, num_beams, ...).
        tokenizer: a SentencePiece ``.model`` or a ``tokenizer.json``; default: the model's own (kept in
            its checkpoint).
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
        overwrite: bool = False,
    ):
        super().__init__()
        self.overwrite = overwrite
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"data.batch_size={batch_size!r} must be a positive integer")
        self.prompts_file, self.output, self.field, self.batch_size = prompts_file, output, field, batch_size
        self.generation = dict(generation or {})
        GenerationConfig(**{k: v for k, v in self.generation.items() if k in _CONFIG_FIELDS})  # checked now
        unknown = sorted(set(self.generation) - _CONFIG_FIELDS)
        if unknown:
            raise ConfigError(f"data.generation: unknown option(s) {unknown}; options: {sorted(_CONFIG_FIELDS)}")
        self.tokenizer = None
        if tokenizer:
            from llm_modules.data.hf_tokenizer import load_tokenizer

            self.tokenizer = load_tokenizer(tokenizer, field="data.tokenizer")
        self.prompts = read_prompts(prompts_file, field)

    def tokenizer_for(self, model):
        """``data.tokenizer``, else the model's own; a ConfigError when neither exists."""
        tokenizer = self.tokenizer or getattr(model, "tokenizer", None)
        if tokenizer is None:
            raise ConfigError("data.tokenizer: give a SentencePiece .model or a tokenizer.json; "
                              "the model carries no tokenizer")
        return tokenizer

    def predict_dataloader(self) -> DataLoader:
        # The model (and so its tokenizer) is known only once Lightning has restored the checkpoint.
        model = self.trainer.lightning_module
        if getattr(model, "kind", None) == "MaskedLM":
            raise ConfigError("PromptDataModule continues prompts, which a MaskedLM does not do; fill masks "
                              "with llm-modules generate MODEL --fill-mask --prompt '... <mask> ...'")
        tokenizer = self.tokenizer_for(model)
        rows = [(i, text, encode_prompt(tokenizer, model, text)) for i, text in enumerate(self.prompts)]
        empty = [i + 1 for i, _, ids in rows if not ids]
        if empty and model.kind != "Seq2SeqLM":
            raise ConfigError(f"{self.prompts_file}: prompt {empty[0]} encodes to no tokens; a decoder needs at "
                              "least one token to continue from")
        pad = model.config.pad_token_id

        def collate(items):
            ids, mask = left_pad([r[2] for r in items], pad)
            return {"prompt_ids": ids, "prompt_mask": mask, "prompt_index": [r[0] for r in items],
                    "prompts": [r[1] for r in items]}

        return DataLoader(rows, batch_size=self.batch_size, shuffle=False, collate_fn=collate)


_CONFIG_FIELDS = set(GenerationConfig.__dataclass_fields__)


def generate_for_prompts(lm, batch: dict, datamodule=None) -> list[dict[str, Any]]:
    """One record per prompt of a PromptDataModule batch: its index, text, generation and new token
    ids. Options and tokenizer come from the data module (without one: defaults, the model's own)."""
    options = dict(getattr(datamodule, "generation", None) or {})
    tokenizer = datamodule.tokenizer_for(lm) if hasattr(datamodule, "tokenizer_for") else lm.tokenizer
    eos = options.setdefault("eos_token_id", stop_ids(lm, tokenizer))
    eos = [eos] if isinstance(eos, int) else list(eos)
    prompt_ids, prompt_mask = batch["prompt_ids"], batch["prompt_mask"]
    out = lm.generate(prompt_ids, prompt_mask, tokenizer=tokenizer, **options).cpu()
    rows = new_tokens(lm, out, prompt_ids.shape[1], eos, lm.config.pad_token_id)
    records = []
    for i, (index, prompt, tokens) in enumerate(zip(batch["prompt_index"], batch["prompts"], rows)):
        context = [] if lm.kind == "Seq2SeqLM" else prompt_ids[i][prompt_mask[i].bool()].tolist()
        text = continuation_text(tokenizer, context, tokens) if tokenizer is not None else ""
        records.append({"index": index, "prompt": prompt, "generation": text, "tokens": tokens})
    return records


class GenerationWriter(BasePredictionWriter):
    """Writes ``predict``'s generation records as JSONL, in prompt order, once the run ends (atomically)."""

    def __init__(self, output: str):
        super().__init__(write_interval="epoch")
        self.output = Path(output)
        if self.output.is_dir():
            raise ConfigError(f"data.output {output!r} is a folder; give a file name such as generations.jsonl")

    def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices) -> None:
        records = [r for batch in predictions for r in batch]
        if trainer.world_size > 1:
            records = _gather(records, trainer.world_size)
        if not trainer.is_global_zero:
            return
        # a distributed sampler may repeat prompts to even out the shares: one record per index
        records = sorted({r["index"]: r for r in records}.values(), key=lambda r: r["index"])
        text = "".join(json.dumps({k: v for k, v in r.items() if k != "index"}, ensure_ascii=False) + "\n"
                       for r in records)
        write_text(self.output, text)
        print(f"wrote {len(records)} generation(s) to {self.output}")


def _gather(records: list[dict], world_size: int) -> list[dict]:
    """Every process's records, on every process (torch.distributed's object gather)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return records
    shards: list[Any] = [None] * world_size
    dist.all_gather_object(shards, records)
    return [r for shard in shards for r in shard]
