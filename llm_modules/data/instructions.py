"""InstructionDataModule: instruction and chat records for supervised fine-tuning, loss on the responses only.

    llm-modules fit --config my_model.yaml --data InstructionDataModule \\
        --data.paths '[train.jsonl]' --data.template alpaca --data.max_len 512 --data.pack true

A thin layer over ``PairsDataModule``: the records (``instruction``/``input``/``output`` or chat
``messages``, detected per record) become prompt/response pairs through a prompt template
(``instruction_format``), and from there the pairs machinery does the rest: the split, the batch
layout per model kind, the generation inputs of validation batches, bits per byte.

Per kind (as ``PairCollator``): **CausalLM** reads ``prompt + response + EOS`` with labels only where
the next token is a response token or the EOS; **PrefixLM** the same row with the prompt as its
bidirectional prefix (``prefix_lengths``); **Seq2SeqLM** encodes the prompt and decodes the response
+ EOS. With ``train_on: all_assistant`` (CausalLM only) a chat's earlier assistant turns are labelled too.

Truncation (counted, and reported in one log line when the records are read):

- Decoder kinds: an example is at most ``max_len`` tokens (prompt + response + EOS; default: the
  model's ``max_seq_len``). With ``truncation: left`` a longer one keeps the whole response if the
  prompt leaves room; otherwise the response is cut from the right, but never below
  ``min_response_len`` tokens, and the prompt is cut from the LEFT to fill what is left, keeping its
  end, the text next to the answer (where the template's "### Response:" marker sits). The
  response is preferred to the prompt above that floor because every response token kept is a
  training signal conditioned on everything the model saw, while a cut prompt trains an answer to
  a question partly unseen. The EOS is never cut (as in PairsDataModule). With ``truncation: drop``
  examples longer than ``max_len`` are left out instead.
- Seq2SeqLM: the prompt keeps its last ``max_source_len`` tokens, the response its first
  ``max_target_len - 1`` plus the EOS (``drop``: a record beyond either limit is left out).

Packing (``pack: true``, CausalLM only): the training examples, in a seeded random order, are laid
end to end into blocks of at most ``max_len`` tokens, next-fit: an example that does not fit starts
a new block, so no example is ever split. Each batch row is a block with ``document_ids`` (B, T):
0, 0, ..., 1, 1, ... per example (padding continues the last one and is masked out by
``attention_mask``), so the model keeps attention inside an example and restarts its positions,
and an example's loss is what it would be alone in a row. The blocks are built once: with document
masking the neighbours of an example do not change its loss, and the loader reshuffles the blocks
every epoch. ``batch_size`` then counts blocks. Validation batches are never packed: they carry
one prompt per row for the generation metrics.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import torch

from llm_modules.data.collators import pad_sequences
from llm_modules.data.chat_template import ChatTemplate, TemplateRecordError
from llm_modules.data.instruction_format import (
    FROM_CHECKPOINT,
    TRAIN_ON,
    RecordError,
    format_record,
    messages_of,
    resolve_template,
)
from llm_modules.data.pairs import IGNORE_INDEX, Pair, PairsDataModule, decoder_labels
from llm_modules.registry import ConfigError

log = logging.getLogger(__name__)

TRUNCATION = ("left", "drop")


class InstructionDataModule(PairsDataModule):
    """Instruction/chat records (JSONL, or ``.json`` lists) for fine-tuning CausalLM, PrefixLM and Seq2SeqLM.

    Args:
        paths: files split into train/validation by ``val_fraction``.
        train_paths / val_paths: the splits as files instead of ``paths``.
        tokenizer: a SentencePiece ``.model`` or a Hugging Face ``tokenizer.json``; default: the model's own.
        template: a built-in template name (``alpaca``, ``plain``, ``chatml``) or a mapping of template
            strings (``prompt``, ``prompt_no_input``, ``system``, ``user``, ``assistant``; ``base``: the
            built-in the other keys default to); or ``from_checkpoint``: the model's own Jinja chat
            template (its tokenizer's ``chat_template``; ``llm_modules.data.chat_template``), where
            each reply ends with the template's end of turn instead of an added EOS.
        train_on: ``last``: the response is the last assistant message; ``all_assistant``: every
            assistant turn of a chat is trained on (CausalLM only).
        max_len: decoder kinds: the longest example in tokens (default: the model's ``max_seq_len``);
            with ``pack`` also the block length.
        min_response_len: the fewest response tokens ``truncation: left`` keeps when it must cut.
        truncation: ``left`` (cut, module docstring) or ``drop`` (leave long records out).
        max_source_len / max_target_len: Seq2SeqLM limits for the prompt and the response (+ EOS).
        pack: lay several examples into each training row (CausalLM only).
        batch_size / val_batch_size / val_fraction / seed / kind / num_workers: as in PairsDataModule.
    """

    def __init__(
        self,
        paths: list[str] | None = None,
        train_paths: list[str] | None = None,
        val_paths: list[str] | None = None,
        tokenizer: str | None = None,
        template: str | dict[str, str] = "alpaca",
        train_on: str = "last",
        max_len: int | None = None,
        min_response_len: int = 32,
        truncation: str = "left",
        max_source_len: int = 512,
        max_target_len: int = 256,
        pack: bool = False,
        batch_size: int = 8,
        val_batch_size: int | None = None,
        val_fraction: float = 0.1,
        seed: int = 1234,
        kind: str | None = None,
        num_workers: int = 0,
    ):
        super().__init__(paths=paths, train_paths=train_paths, val_paths=val_paths, tokenizer=tokenizer,
                         max_source_len=max_source_len, max_target_len=max_target_len, batch_size=batch_size,
                         val_batch_size=val_batch_size, val_fraction=val_fraction, seed=seed, kind=kind,
                         num_workers=num_workers)
        self.template = resolve_template(template)
        if train_on not in TRAIN_ON:
            raise ConfigError(f"data.train_on={train_on!r} is not one of {', '.join(TRAIN_ON)}")
        if truncation not in TRUNCATION:
            raise ConfigError(f"data.truncation={truncation!r} is not one of {', '.join(TRUNCATION)}: left cuts "
                              "the prompt from the left, drop leaves long records out")
        if min_response_len < 1:
            raise ConfigError(f"data.min_response_len={min_response_len} must be 1 or more")
        if max_len is not None:
            self._check_max_len(max_len, min_response_len)
        self.train_on, self.max_len, self.min_response_len = train_on, max_len, min_response_len
        self.truncation, self.pack = truncation, pack
        self.counts: Counter = Counter()  # records read, prompts/responses cut, dropped: see _report
        self._chat: ChatTemplate | None = None  # template: from_checkpoint, compiled once the tokenizer is known
        self._blocks: list[list[Pair]] | None = None
        if kind is not None:
            self._check_kind(kind)

    # ---- loading ----------------------------------------------------------------------------------------

    def _load(self) -> None:
        if self.train is not None:
            return
        self.kind = self.kind or self._model_kind()
        self._check_kind(self.kind)
        if self.kind != "Seq2SeqLM" and self.max_len is None:
            self.max_len = self._model_max_len()
            self._check_max_len(self.max_len, self.min_response_len)
        self.counts.clear()
        super()._load()
        if not (self.train or self.val):
            raise ConfigError(f"data.truncation=drop left no records: every one is longer than "
                              f"{self._length_options()}; raise the limits or use data.truncation: left")
        if self.pack and self.train:
            self._blocks = pack_examples(self.train, self.max_len, self.seed)
        self._report()

    def _pair(self, record: dict[str, Any], fmt: Callable, path: str, where: str, key: str) -> Pair | None:
        location = f"{path}:{where.split()[-1]}"
        tok = self._tokenizer
        try:
            segments = self._segments(record, tok)
        except (RecordError, TemplateRecordError) as err:
            raise ConfigError(f"data: {location}: {err}") from None
        source: list[int] = []
        scored: list[tuple[int, int]] = []
        for text, trained in segments[:-1]:
            ids = tok.encode(text)
            if trained and ids:
                scored.append((len(source), len(source) + len(ids)))
            source += ids
        if not source:
            raise ConfigError(f"data: {location}: the prompt is empty; a model needs something to answer (give the "
                              "record an instruction, or a data.template that writes some text)")
        response = segments[-1][0]
        target, end = tok.encode(response), tok.eos_id
        if self._chat is not None:  # the template wrote the turn's end (<|eot_id|>): it ends the target
            if not target:
                raise ConfigError(f"data: {location}: the chat template renders the reply as no text")
            target, end = target[:-1], target[-1]
            response = tok.decode(target)
        self.counts["records"] += 1
        if self.kind == "Seq2SeqLM":
            fitted = fit_seq2seq(source, target, self.max_source_len, self.max_target_len, self.truncation)
        else:
            fitted = fit_decoder(source, scored, target, self.max_len, self.min_response_len, self.truncation)
        if fitted is None:
            self.counts["dropped"] += 1
            return None
        source, scored, target, prompt_cut, response_cut = fitted
        self.counts["prompts_cut"] += prompt_cut
        self.counts["responses_cut"] += response_cut
        return Pair(source, target + [end], response, key, tuple(scored))

    def _segments(self, record: dict[str, Any], tok) -> list[tuple[str, bool]]:
        """The record's text segments: through a built-in or given template, or the model's chat template."""
        if self.template != FROM_CHECKPOINT:
            return format_record(record, self.template, self.train_on)
        if self._chat is None:
            self._chat = ChatTemplate.of(tok)
        return self._chat.segments(messages_of(record), self.train_on)

    def _training_items(self) -> tuple[Sequence, Callable]:
        if not self.pack:
            return super()._training_items()
        return self._blocks, PackedCollator(self._tokenizer.pad_id)

    # ---- checks and figures -----------------------------------------------------------------------------

    def _check_kind(self, kind: str) -> None:
        if self.pack and kind != "CausalLM":
            raise ConfigError(f"data.pack: packing is for CausalLM; a {kind} row cannot hold several examples "
                              + ("(the prefix belongs to the row)" if kind == "PrefixLM"
                                 else "(the encoder input and the decoder target are one pair per row)")
                              + "; set data.pack: false")
        if self.train_on == "all_assistant" and kind != "CausalLM":
            raise ConfigError(f"data.train_on=all_assistant is for CausalLM: in a {kind} the earlier turns are "
                              + ("the bidirectional prefix, which sees the answers it would be trained to write"
                                 if kind == "PrefixLM" else "the encoder input, which has no labels")
                              + "; use data.train_on: last")

    @staticmethod
    def _check_max_len(max_len: int, min_response_len: int) -> None:
        if max_len < min_response_len + 2:
            raise ConfigError(f"data.max_len={max_len} leaves no room: an example needs a prompt token, "
                              f"data.min_response_len={min_response_len} response tokens and the EOS; raise "
                              f"data.max_len to {min_response_len + 2} or more, or lower data.min_response_len")

    def _model_max_len(self) -> int:
        max_len = getattr(getattr(self._model(), "config", None), "max_seq_len", None)
        if max_len is None:
            raise ConfigError("data.max_len: give the longest example in tokens (prompt + response + EOS); there "
                              "is no model attached to take model.config.max_seq_len from")
        return int(max_len)

    def _length_options(self) -> str:
        if self.kind == "Seq2SeqLM":
            return super()._length_options()
        return f"data.max_len={self.max_len}"

    def _report(self) -> None:
        """One line that says what was read and what truncation did to it."""
        c = self.counts
        line = (f"data: {c['records']} instruction records ({len(self.train)} train, {len(self.val)} validation); "
                f"truncation={self.truncation} at {self._length_options()}: ")
        if self.truncation == "drop":
            line += f"{c['dropped']} dropped"
        else:
            line += f"{c['prompts_cut']} prompts cut from the left, {c['responses_cut']} responses cut from the right"
        if self._blocks is not None:
            tokens = sum(len(p.source_ids) + len(p.target_ids) for p in self.train)
            line += (f"; packed {len(self.train)} examples into {len(self._blocks)} blocks of up to {self.max_len} "
                     f"tokens ({tokens / (len(self._blocks) * self.max_len):.0%} filled)")
        log.info(line)


# ---- truncation -----------------------------------------------------------------------------------------


def fit_decoder(
    source: list[int], scored: list[tuple[int, int]], target: list[int], max_len: int, min_response_len: int,
    truncation: str = "left",
) -> tuple[list[int], list[tuple[int, int]], list[int], bool, bool] | None:
    """``(source, scored, target, prompt_cut, response_cut)`` fitted to ``max_len`` with the EOS still to
    come (module docstring), or None when ``truncation`` is ``drop`` and the example is too long."""
    room = max_len - 1  # the EOS always gets its place
    if len(source) + len(target) <= room:
        return source, scored, target, False, False
    if truncation == "drop":
        return None
    keep_response = min(len(target), max(min_response_len, room - len(source)))
    keep_prompt = min(len(source), room - keep_response)
    cut = len(source) - keep_prompt
    # spans move with the cut; a span's first token at position 0 has no logit to predict it
    spans = [(max(begin - cut, 1), end - cut) for begin, end in scored if end - cut > max(begin - cut, 1)]
    return source[cut:], spans, target[:keep_response], cut > 0, keep_response < len(target)


def fit_seq2seq(
    source: list[int], target: list[int], max_source_len: int, max_target_len: int, truncation: str = "left",
) -> tuple[list[int], list[tuple[int, int]], list[int], bool, bool] | None:
    """The prompt's last ``max_source_len`` tokens, the response's first ``max_target_len - 1`` (+ EOS
    later); None for ``drop`` when either is too long."""
    prompt_cut, response_cut = len(source) > max_source_len, len(target) > max_target_len - 1
    if truncation == "drop" and (prompt_cut or response_cut):
        return None
    kept_source = source[-max_source_len:] if prompt_cut else source
    return kept_source, [], target[: max_target_len - 1], prompt_cut, response_cut


# ---- packing --------------------------------------------------------------------------------------------


def pack_examples(pairs: Sequence[Pair], max_len: int, seed: int) -> list[list[Pair]]:
    """Blocks of whole examples, at most ``max_len`` tokens each: next-fit over a seeded random order
    (linear time; the order mixes short and long examples so blocks fill well)."""
    order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(seed)).tolist()
    blocks: list[list[Pair]] = []
    used = max_len + 1  # nothing open yet
    for i in order:
        size = len(pairs[i].source_ids) + len(pairs[i].target_ids)
        if size > max_len:
            raise ValueError(f"an example of {size} tokens cannot be packed into blocks of {max_len}")
        if used + size > max_len:
            blocks.append([])
            used = 0
        blocks[-1].append(pairs[i])
        used += size
    return blocks


class PackedCollator:
    """Blocks of examples -> a CausalLM batch: ``input_ids``, ``attention_mask``, ``labels`` (responses
    only, as ``decoder_labels``) and ``document_ids`` (each example its own document)."""

    def __init__(self, pad_id: int):
        self.pad_id = int(pad_id)

    def __call__(self, blocks: Sequence[Sequence[Pair]]) -> dict[str, torch.Tensor]:
        rows, labels, documents = [], [], []
        for block in blocks:
            rows.append([t for p in block for t in p.source_ids + p.target_ids])
            labels.append([t for p in block for t in decoder_labels(p)])
            documents.append([d for d, p in enumerate(block) for _ in range(len(p.source_ids) + len(p.target_ids))])
        input_ids, attention_mask = pad_sequences(rows, self.pad_id)
        label_ids, _ = pad_sequences(labels, IGNORE_INDEX)
        width = input_ids.shape[1]
        # padding continues the row's last document: masked out as keys, never scored
        document_ids = torch.tensor([d + [d[-1]] * (width - len(d)) for d in documents], dtype=torch.long)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": label_ids,
                "document_ids": document_ids}
