"""PreferenceDataModule: pairs of responses to one prompt, the better one first, for reward models and DPO.

    llm-modules fit --model llm_modules.alignment.DPO --model.init_from sft.ckpt \\
        --data llm_modules.data.PreferenceDataModule --data.paths '[prefs.jsonl]'

Records (JSONL, or a ``.json`` list): ``{"prompt": str, "chosen": str, "rejected": str}``, plus an
optional number ``margin`` (how much better ``chosen`` is; a reward model's loss asks for at least
that gap, 0 for records without one). The prompt is used as written, or, with ``template`` (a name
or mapping as in ``InstructionDataModule``), as the template's ``prompt_no_input`` with the prompt
as ``{instruction}``: the layout an SFT model was trained on.

Batches, for decoder LMs (CausalLM and PrefixLM backbones): per side (``chosen_``, ``rejected_``)
``input_ids`` / ``attention_mask`` / ``labels`` for ``prompt + response + EOS``, right-padded, the
labels set only where the next token is a response token or the EOS (``pairs.decoder_labels``,
via ``PairCollator``); ``prefix_lengths`` (the prompt's length, for a PrefixLM backbone);
``margin`` (B,) when any record of the batch has one; ``keys``, each record's ``file:line``, by
which DPO caches reference log-probabilities. Prompt and responses are tokenized apart, so the
labels fall exactly on the response tokens. Seq2SeqLM is not supported: scoring a response there
is a decoder pass over the encoder's output, which the alignment modules do not implement.

Truncation, as ``InstructionDataModule`` does for decoders: a row is at most ``max_len`` tokens
(default: the model's ``max_seq_len``). ``left``: the prompt is cut from the left, the same for
both responses (the two are compared given the same context), as far as the longer response needs,
but that response keeps at least ``min_response_len`` tokens; each response is then cut from the
right to what is left; the EOS is never cut. ``drop``: records with a row over ``max_len`` are left
out. A pair whose two responses are the same tokens (as written, or after cutting) says nothing
about preference and is left out too. The counts are reported in one log line.

Split, tokenizer, batch sizes: as ``PairsDataModule`` (``paths`` + ``val_fraction``, or
``train_paths`` / ``val_paths``; ``tokenizer``, else the model's own).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from llm_modules.data.instruction_format import resolve_template
from llm_modules.data.instructions import InstructionDataModule, fit_decoder
from llm_modules.data.pairs import Pair, PairCollator
from llm_modules.kinds import DECODERS
from llm_modules.registry import ConfigError

log = logging.getLogger(__name__)

SIDES = ("chosen", "rejected")
FIELDS = ("prompt", "chosen", "rejected")


@dataclass
class Preference:
    """One record: the chosen and the rejected response, each as a decoder ``Pair`` on the same prompt."""

    chosen: Pair
    rejected: Pair
    margin: float | None
    key: str  # "path:line", unique in a run: what DPO's reference cache is keyed by

    @property
    def where(self) -> str:
        """What the split hashes (``PairsDataModule``): the file name and line."""
        return self.chosen.where

    @property
    def source_ids(self) -> list[int]:
        return self.chosen.source_ids

    @property
    def target_ids(self) -> list[int]:
        """The longer response (+ EOS): with ``source_ids``, the longest row, which length checks need."""
        return max(self.chosen.target_ids, self.rejected.target_ids, key=len)


class PreferenceCollator:
    """Preferences -> one batch with ``chosen_*`` and ``rejected_*`` rows (module docstring)."""

    def __init__(self, kind: str, pad_id: int):
        self.rows = PairCollator(kind, pad_id)

    def __call__(self, items: Sequence[Preference]) -> dict[str, Any]:
        batch: dict[str, Any] = {}
        for side in SIDES:
            part = self.rows([getattr(item, side) for item in items])
            for name in ("input_ids", "attention_mask", "labels"):
                batch[f"{side}_{name}"] = part[name]
            if "prefix_lengths" in part:  # the same prompt on both sides
                batch["prefix_lengths"] = part["prefix_lengths"]
        if any(item.margin is not None for item in items):
            batch["margin"] = torch.tensor([item.margin or 0.0 for item in items], dtype=torch.float32)
        batch["keys"] = [item.key for item in items]
        return batch


class PreferenceDataModule(InstructionDataModule):
    """Preference records (``prompt``, ``chosen``, ``rejected``, optional ``margin``) for RewardModel and DPO.

    Args:
        paths: JSONL files (or ``.json`` lists) split into train/validation by ``val_fraction``.
        train_paths / val_paths: the splits as files instead of ``paths``.
        tokenizer: SentencePiece ``.model`` path; default: the model's own.
        template: None (the prompt as written), or a template name (``alpaca``, ``plain``, ``chatml``)
            or mapping (as ``InstructionDataModule``) whose ``prompt_no_input`` wraps the prompt.
        max_len: the longest row in tokens (prompt + response + EOS; default: the model's max_seq_len).
        min_response_len: the fewest tokens ``truncation: left`` leaves the longer response.
        truncation: ``left`` (cut; module docstring) or ``drop`` (leave long records out).
        batch_size / val_batch_size: pairs per batch; val_fraction / seed / num_workers: as PairsDataModule.
        kind: the backbone's kind (CausalLM, PrefixLM); default: the model's.
    """

    def __init__(
        self,
        paths: list[str] | None = None,
        train_paths: list[str] | None = None,
        val_paths: list[str] | None = None,
        tokenizer: str | None = None,
        template: str | dict[str, str] | None = None,
        max_len: int | None = None,
        min_response_len: int = 32,
        truncation: str = "left",
        batch_size: int = 8,
        val_batch_size: int | None = None,
        val_fraction: float = 0.1,
        seed: int = 1234,
        kind: str | None = None,
        num_workers: int = 0,
    ):
        super().__init__(paths=paths, train_paths=train_paths, val_paths=val_paths, tokenizer=tokenizer,
                         max_len=max_len, min_response_len=min_response_len, truncation=truncation,
                         batch_size=batch_size, val_batch_size=val_batch_size, val_fraction=val_fraction, seed=seed,
                         kind=kind, num_workers=num_workers)
        self.template = None if template is None else resolve_template(template)

    # ---- records ----------------------------------------------------------------------------------------

    def _pair(self, record: dict[str, Any], fmt: Callable, path: str, where: str, key: str) -> Preference | None:
        location = f"{path}:{where.split()[-1]}"
        texts = {}
        for field in FIELDS:
            value = record.get(field)
            if not isinstance(value, str):
                raise ConfigError(f"data: {location}: field {field!r} is missing or not a string; a preference record "
                                  "is {\"prompt\": ..., \"chosen\": ..., \"rejected\": ...} (and optionally \"margin\")")
            texts[field] = value
        margin = record.get("margin")
        if margin is not None and (isinstance(margin, bool) or not isinstance(margin, (int, float))):
            raise ConfigError(f"data: {location}: field 'margin' must be a number (or absent); got {margin!r}")
        prompt = texts["prompt"] if self.template is None else self.template.prompt_no_input.format(
            instruction=texts["prompt"])
        tok = self._tokenizer
        source = tok.encode(prompt)
        if not source:
            raise ConfigError(f"data: {location}: the prompt is empty; both responses answer it, so give one")
        chosen, rejected = tok.encode(texts["chosen"]), tok.encode(texts["rejected"])
        self.counts["records"] += 1
        longer = max(chosen, rejected, key=len)
        fitted = fit_decoder(source, [], longer, self.max_len, self.min_response_len, self.truncation)
        if fitted is None:
            self.counts["dropped"] += 1
            return None
        source, _, _, prompt_cut, response_cut = fitted
        room = self.max_len - 1 - len(source)
        chosen, rejected = chosen[:room], rejected[:room]
        if chosen == rejected:
            self.counts["identical"] += 1
            return None
        self.counts["prompts_cut"] += prompt_cut
        self.counts["responses_cut"] += response_cut
        eos = tok.eos_id
        return Preference(Pair(source, chosen + [eos], texts["chosen"], key),
                          Pair(source, rejected + [eos], texts["rejected"], key),
                          None if margin is None else float(margin), location)

    @staticmethod
    def _count_bytes_per_token(pairs, tok) -> None:
        """No bits per byte: preference models log rewards and accuracies, not a token loss."""

    # ---- loaders ----------------------------------------------------------------------------------------

    def _training_items(self) -> tuple[Sequence, Callable]:
        return self.train, PreferenceCollator(self.kind, self._tokenizer.pad_id)

    def _validation_collator(self) -> Callable:
        return PreferenceCollator(self.kind, self._tokenizer.pad_id)

    # ---- checks and report ------------------------------------------------------------------------------

    def _check_kind(self, kind: str) -> None:
        if kind not in DECODERS:
            raise ConfigError(f"data.kind={kind!r}: preference pairs are laid out for decoder LMs ({', '.join(DECODERS)}); "
                              "an encoder-decoder (Seq2SeqLM) is not supported by the alignment modules")

    def _model_kind(self) -> str:
        """The backbone's kind: an alignment module reports it as ``base_kind``."""
        model = self._model()
        kind = getattr(model, "base_kind", None) or getattr(model, "kind", None)
        if kind is None:
            raise ConfigError("data.kind: no model is attached to take the kind from; set data.kind: CausalLM "
                              "(or PrefixLM)")
        self._check_kind(kind)
        return kind

    def _report(self) -> None:
        c = self.counts
        line = (f"data: {c['records']} preference records ({len(self.train)} train, {len(self.val)} validation); "
                f"truncation={self.truncation} at data.max_len={self.max_len}: ")
        if self.truncation == "drop":
            line += f"{c['dropped']} dropped"
        else:
            line += (f"{c['prompts_cut']} prompts cut from the left, {c['responses_cut']} pairs with a response cut "
                     "from the right")
        line += f"; {c['identical']} left out with identical responses"
        log.info(line)
