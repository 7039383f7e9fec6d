"""PairsDataModule: JSONL records of a source and a reference text, batched for every generating LM kind.

Each line of a ``.jsonl`` file is a record (a ``.json`` file holds a list of them);
``record_to_pair`` turns it into a (prompt, reference)
pair of texts (by default the ``input`` and ``output`` fields as they are; a template that builds
prompts from instruction records replaces that one function). The pair becomes, per model kind:

- **Seq2SeqLM**: ``input_ids``/``attention_mask`` = the prompt (encoder), ``labels`` = reference + EOS,
  padded with -100 (the model shifts them right for the decoder).
- **CausalLM / PrefixLM**: one sequence ``prompt + reference + EOS``, right-padded, with ``labels``
  aligned with the logits (position t predicts t+1) and set only where the *next* token is a
  reference token or the EOS: the model is trained and scored on the answer, not on the question.
  PrefixLM also gets ``prefix_lengths`` = prompt length, so the prompt is read bidirectionally.

Validation and test batches also carry what generation metrics need (``training.evaluation``):
``prompt_ids``/``prompt_mask``, the prompts as ``generate`` reads them (left-padded for decoders, so
every row's answer starts in the same column; the encoder inputs as they are for Seq2SeqLM), and
``references``, the reference texts as written in the file.

Truncation: a prompt keeps its first ``max_source_len`` tokens, a reference its first
``max_target_len - 1`` tokens followed by the EOS (the EOS is never cut: the model must learn to
stop). The ``references`` used for BLEU/ROUGE/exact match are never truncated: a model that cannot
write the whole answer is scored as not writing it.

Split: with ``paths``, a record is validation when a hash of ``(seed, file name, line)`` falls below
``val_fraction`` (1.0: every record, for validating a model on a file); ``train_paths`` and
``val_paths`` give the splits as files instead. Records are read and tokenized in ``setup`` and held
in memory: pair data sets are fine-tuning and evaluation sets, small next to pre-training corpora.

Tokenizer: ``tokenizer`` (a SentencePiece ``.model`` path), else the model's own (a checkpoint keeps
it; ``validate --ckpt_path`` restores the checkpoint after ``setup``, so then the records are read
when the first dataloader is asked for).
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from llm_modules.data.collators import pad_sequences
from llm_modules.data.packing import split_documents
from llm_modules.data.tokenizer import Tokenizer
from llm_modules.generation.prompts import left_pad
from llm_modules.kinds import GENERATING
from llm_modules.registry import ConfigError

IGNORE_INDEX = -100
KINDS = GENERATING  # the LM kinds pairs are laid out for


def record_to_pair(record: dict[str, Any], source_field: str = "input", reference_field: str = "output") -> tuple[str, str]:
    """(prompt text, reference text) of one record: the two fields as they are.

    The replaceable step (``PairsDataModule(format_fn=...)``): a formatter takes the same arguments and
    raises ``KeyError(field)`` for a field the record lacks, which the data module reports with the
    file and line.
    """
    return _text(record, source_field), _text(record, reference_field)


def _text(record: dict[str, Any], field: str) -> str:
    value = record.get(field)
    if not isinstance(value, str):
        raise KeyError(field)
    return value


@dataclass
class Pair:
    """One tokenized record: what the collator needs and where it came from.

    ``scored`` lists ``[start, end)`` spans of ``source_ids`` that are trained on as well (decoder
    kinds only): the earlier assistant turns of a chat when every assistant turn is a response.
    """

    source_ids: list[int]
    target_ids: list[int]  # ends with EOS
    reference: str
    where: str  # "file:line", for messages
    scored: tuple[tuple[int, int], ...] = ()


def decoder_labels(pair: Pair) -> list[int]:
    """Labels for the decoder row ``source + target``, aligned with the logits (position t predicts t+1).

    Set only where the next token is a target token (reference + EOS) or inside a ``scored`` span of
    the source; IGNORE_INDEX elsewhere, so the prompt is read but never trained on.
    """
    tokens = pair.source_ids + pair.target_ids
    labels = [IGNORE_INDEX] * len(tokens)
    start = len(pair.source_ids)
    labels[start - 1 : len(tokens) - 1] = pair.target_ids
    for begin, end in pair.scored:  # begin >= 1: the first token of a row has no logit before it
        labels[begin - 1 : end - 1] = pair.source_ids[begin:end]
    return labels


class PairCollator:
    """Pairs -> a batch for ``kind`` (module docstring); ``with_prompts`` adds the generation inputs."""

    def __init__(self, kind: str, pad_id: int, with_prompts: bool = False):
        self.kind, self.pad_id, self.with_prompts = kind, int(pad_id), with_prompts

    def __call__(self, pairs: Sequence[Pair]) -> dict[str, Any]:
        if self.kind == "Seq2SeqLM":
            input_ids, attention_mask = pad_sequences([p.source_ids for p in pairs], self.pad_id)
            labels, _ = pad_sequences([p.target_ids for p in pairs], IGNORE_INDEX)
            batch: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
            prompts = (input_ids, attention_mask)
        else:
            input_ids, attention_mask = pad_sequences([p.source_ids + p.target_ids for p in pairs], self.pad_id)
            labels, _ = pad_sequences([decoder_labels(p) for p in pairs], IGNORE_INDEX)
            batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
            if self.kind == "PrefixLM":
                batch["prefix_lengths"] = torch.tensor([len(p.source_ids) for p in pairs])
            prompts = left_pad([p.source_ids for p in pairs], self.pad_id) if self.with_prompts else None
        if self.with_prompts:
            batch["prompt_ids"], batch["prompt_mask"] = prompts
            batch["references"] = [p.reference for p in pairs]
        return batch


class PairsDataModule(L.LightningDataModule):
    """Source/reference pairs from JSONL files, for fine-tuning and evaluating generating LMs.

    Args:
        paths: JSONL files (or ``.json`` files holding a list of records) split into train/validation
            by ``val_fraction``.
        train_paths / val_paths: the splits as files instead of ``paths`` (either may be empty).
        tokenizer: SentencePiece ``.model`` path; default: the model's own tokenizer.
        source_field / reference_field: the record keys of the source (prompt) and the reference.
        format_fn: import path of a ``record_to_pair``-like function (default: the two fields as they are).
        max_source_len / max_target_len: token limits (truncation: module docstring).
        batch_size / val_batch_size: pairs per batch (validation default: ``batch_size``).
        val_fraction: share of the ``paths`` records held out (1.0: all, for validate/test on a file).
        seed: fixes the split and the training order.
        kind: the LM kind batches are laid out for (CausalLM, PrefixLM, Seq2SeqLM); default: the model's.
        num_workers: DataLoader worker processes.
    """

    def __init__(
        self,
        paths: list[str] | None = None,
        train_paths: list[str] | None = None,
        val_paths: list[str] | None = None,
        tokenizer: str | None = None,
        source_field: str = "input",
        reference_field: str = "output",
        format_fn: str | None = None,
        max_source_len: int = 512,
        max_target_len: int = 128,
        batch_size: int = 8,
        val_batch_size: int | None = None,
        val_fraction: float = 0.1,
        seed: int = 1234,
        kind: str | None = None,
        num_workers: int = 0,
    ):
        super().__init__()
        if paths and (train_paths or val_paths):
            raise ConfigError("data.paths is split by val_fraction, data.train_paths/val_paths are the splits; "
                              "give one or the other")
        if not (paths or train_paths or val_paths):
            raise ConfigError("data.paths: give JSONL files of records (or data.train_paths / data.val_paths)")
        for name, value in (("max_source_len", max_source_len), ("batch_size", batch_size)):
            if value < 1:
                raise ConfigError(f"data.{name}={value} must be 1 or more")
        if max_target_len < 2:
            raise ConfigError(f"data.max_target_len={max_target_len} must be 2 or more (a reference token and EOS)")
        if val_batch_size is not None and val_batch_size < 1:
            raise ConfigError(f"data.val_batch_size={val_batch_size} must be 1 or more")
        if not 0 <= val_fraction <= 1:
            raise ConfigError(f"data.val_fraction={val_fraction} must be in [0, 1]; e.g. 0.1 holds out 10% of the "
                              "records, 1.0 evaluates on all of them")
        if kind is not None and kind not in KINDS:
            raise ConfigError(f"data.kind={kind!r} is not one of {', '.join(KINDS)} (or leave it unset: the model's)")
        self.paths, self.train_paths, self.val_paths = list(paths or []), list(train_paths or []), list(val_paths or [])
        self.tokenizer_path = tokenizer
        self.source_field, self.reference_field = source_field, reference_field
        self.format_fn = format_fn
        self.max_source_len, self.max_target_len = max_source_len, max_target_len
        self.batch_size, self.val_batch_size = batch_size, val_batch_size or batch_size
        self.val_fraction, self.seed, self.kind, self.num_workers = val_fraction, seed, kind, num_workers
        self._tokenizer: Tokenizer | None = None
        self._bytes_per_token: float | None = None
        self.train: list[Pair] | None = None
        self.val: list[Pair] | None = None

    # ---- public figures ---------------------------------------------------------------------------------

    @property
    def tokenizer(self) -> Tokenizer | None:
        """The tokenizer (``data.tokenizer``, else the model's; known after ``setup``)."""
        if self._tokenizer is None and self.tokenizer_path:
            from llm_modules.data.hf_tokenizer import load_tokenizer  # a .model, a tokenizer.json or a folder

            self._tokenizer = load_tokenizer(self.tokenizer_path, field="data.tokenizer")
        return self._tokenizer

    @property
    def bytes_per_token(self) -> float | None:
        """UTF-8 bytes of the scored text per scored token (reference tokens + EOS) of the validation split.

        Bits per byte = loss / ln 2 / bytes_per_token; only the references are scored, so only their
        bytes count (the truncated text where a reference was cut).
        """
        return self._bytes_per_token

    @staticmethod
    def _count_bytes_per_token(pairs: list[Pair], tok: Tokenizer) -> float | None:
        # Once per load: the model asks for this figure at every validation step.
        tokens = sum(len(p.target_ids) for p in pairs)
        text_bytes = sum(len(tok.decode(p.target_ids[:-1]).encode()) for p in pairs)
        return text_bytes / tokens if tokens else None

    # ---- Lightning hooks --------------------------------------------------------------------------------

    def setup(self, stage: str | None = None) -> None:
        """Read and tokenize the records, unless the tokenizer is the checkpoint's: Lightning restores a
        checkpoint (``validate --ckpt_path``) only after setup, so then the dataloaders do it."""
        if self.train is None and self._find_tokenizer() is not None:
            self._load()

    def _load(self) -> None:
        if self.train is not None:
            return
        tok = self._find_tokenizer()
        if tok is None:
            raise ConfigError("data.tokenizer: give a SentencePiece .model path; the model carries no tokenizer")
        if tok.eos_id < 0:
            raise ConfigError(f"data.tokenizer: {tok.source!r} has no end-of-sequence piece; references "
                              "end with EOS, so use a tokenizer with one")
        self._tokenizer = tok
        self.kind = self.kind or self._model_kind()
        fmt = _import(self.format_fn) if self.format_fn else record_to_pair
        if self.paths:
            records = [r for path in self.paths for r in self._read(path, fmt, "data.paths")]
            train_idx, val_idx = split_documents([p.where for p in records], self.val_fraction, self.seed)
            self.train, self.val = [records[i] for i in train_idx], [records[i] for i in val_idx]
        else:
            self.train = [r for path in self.train_paths for r in self._read(path, fmt, "data.train_paths")]
            self.val = [r for path in self.val_paths for r in self._read(path, fmt, "data.val_paths")]
        self._check_lengths()
        self._bytes_per_token = self._count_bytes_per_token(self.val or self.train, tok)

    def train_dataloader(self) -> DataLoader:
        self._load()
        if not self.train:
            raise ConfigError("data: no training records (data.val_fraction=1.0 or no data.train_paths); lower "
                              "val_fraction or give train_paths to fit")
        items, collate = self._training_items()
        return DataLoader(items, batch_size=self.batch_size, shuffle=True, drop_last=False, collate_fn=collate,
                          generator=torch.Generator().manual_seed(self.seed), num_workers=self.num_workers)

    def _training_items(self) -> tuple[Sequence, Callable]:
        """What the training loader draws from and how it batches it (a subclass may pack here)."""
        return self.train, PairCollator(self.kind, self._tokenizer.pad_id)

    def val_dataloader(self):
        self._load()
        if not self.val:
            return []
        return DataLoader(self.val, batch_size=self.val_batch_size, shuffle=False, num_workers=self.num_workers,
                          collate_fn=self._validation_collator())

    def _validation_collator(self) -> Callable:
        """How validation batches are laid out: with the prompts and references generation metrics read."""
        return PairCollator(self.kind, self._tokenizer.pad_id, with_prompts=True)

    def test_dataloader(self):
        """The validation records again: there is no separate test split."""
        return self.val_dataloader()

    # ---- internals --------------------------------------------------------------------------------------

    def _read(self, path: str, fmt: Callable, field: str) -> list[Pair]:
        file = Path(path)
        if not file.is_file():
            raise ConfigError(f"{field}: {path!r} is not a file; give JSONL files of records")
        pairs, seen = [], 0
        for where, record in _records(file):
            seen += 1
            pair = self._pair(record, fmt, path, where, f"{file.name}:{where.split()[-1]}")
            if pair is not None:
                pairs.append(pair)
        if not seen:
            raise ConfigError(f"{field}: {path!r} holds no records")
        return pairs

    def _pair(self, record: dict[str, Any], fmt: Callable, path: str, where: str, key: str) -> Pair | None:
        """One record as a tokenized Pair (``key`` fixes its split); the step a subclass replaces, and
        where it may leave a record out (None)."""
        tok = self._tokenizer
        try:
            prompt, reference = fmt(record, self.source_field, self.reference_field)
        except KeyError as err:
            missing = err.args[0] if err.args else "?"
            raise ConfigError(f"data: {path} {where} has no text field {missing!r}; fix the record or "
                              "set data.source_field / data.reference_field to the record's keys") from None
        source = tok.encode(prompt)[: self.max_source_len]
        if not source:
            raise ConfigError(f"data: {path} {where}: the prompt is empty; a model needs something to "
                              f"answer (field {self.source_field!r})")
        target = tok.encode(reference)[: self.max_target_len - 1] + [tok.eos_id]
        return Pair(source, target, reference, key)

    def _find_tokenizer(self) -> Tokenizer | None:
        return self.tokenizer or getattr(self._model(), "tokenizer", None)

    def _model(self):
        trainer = getattr(self, "trainer", None)
        return getattr(trainer, "lightning_module", None) if trainer is not None else None

    def _model_kind(self) -> str:
        kind = getattr(self._model(), "kind", None)
        if kind not in KINDS:
            raise ConfigError(f"data.kind: pairs are laid out for {', '.join(KINDS)}; the model is "
                              f"{kind or 'not attached'} (set data.kind, or use TextDataModule for a MaskedLM)")
        return kind

    def _check_lengths(self) -> None:
        """Refuse sequences longer than learned/absolute positions allow, naming the data limits to lower."""
        model = getattr(self._model(), "model", None)
        max_len = getattr(model, "max_positions", None)
        if max_len is None:
            return
        pairs = (self.train or []) + (self.val or [])
        if self.kind == "Seq2SeqLM":
            longest = max((max(len(p.source_ids), len(p.target_ids)) for p in pairs), default=0)
        else:
            longest = max((len(p.source_ids) + len(p.target_ids) for p in pairs), default=0)
        if longest > max_len:
            raise ConfigError(f"{self._length_options()}: a sequence of {longest} tokens is beyond "
                              f"model.config.max_seq_len={max_len}; lower them")

    def _length_options(self) -> str:
        """The data options that bound a sequence's length, for messages."""
        return f"data.max_source_len={self.max_source_len} / data.max_target_len={self.max_target_len}"


def _records(file: Path):
    """(``"line N"`` or ``"record N"``, record) for each record of a JSONL file, or of a ``.json``
    file holding one list of records; blank JSONL lines are skipped."""
    if file.suffix == ".json":
        try:
            records = json.loads(file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ConfigError(f"data: {file} is not JSON ({err.msg} at line {err.lineno}); a .json file holds "
                              "one list of records (or use .jsonl, one record per line)") from None
        if not isinstance(records, list):
            raise ConfigError(f"data: {file} holds a JSON {type(records).__name__}, not a list of records; "
                              "write [{...}, {...}] (or use .jsonl, one record per line)")
        for number, record in enumerate(records, 1):
            if not isinstance(record, dict):
                raise ConfigError(f"data: {file} record {number} is not a JSON object")
            yield f"record {number}", record
        return
    with open(file, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ConfigError(f"data: {file} line {line_no} is not JSON ({err.msg}); one record per line "
                                  "(a .json file may hold a list of records instead)") from None
            if not isinstance(record, dict):
                raise ConfigError(f"data: {file} line {line_no} is not a JSON object; one record per line")
            yield f"line {line_no}", record


def _import(path: str) -> Callable:
    module, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as err:
        raise ConfigError(f"data.format_fn={path!r} cannot be imported ({err}); give module.function") from None
