"""TextDataModule: paths in, fixed-length token blocks out, resumable and mixable.

What happens, in order (``prepare_data`` does the first two once per node, ``setup`` all of it):

1. **Tokenizer**: load ``tokenizer`` (a ``.model`` path) or, with ``train_tokenizer``, train one on the
   training documents and keep it under ``cache_dir/tokenizers`` (keyed by inputs and settings, so a
   rerun reuses it).
2. **Token cache**: each source is tokenized once into a memmapped token file (see ``token_cache``).
3. **Split by document**: a document goes to validation when a hash of ``(seed, source_id)`` falls
   below ``val_fraction``. Whole documents, so no text is in both splits; by id, so the split stays put
   when files are added or the cache is rebuilt.
4. **Packing**: the training documents (in a seeded order) are laid end to end with EOS after each
   and cut into blocks of ``seq_len`` tokens; the remainder is dropped, so every block is full and no
   padding is needed. A block holds exactly ``seq_len`` tokens because the models shift targets
   themselves (``shift_targets``: position t predicts t+1).
5. **Sampling**: each epoch is a seeded permutation of the blocks (a function of ``seed`` and the
   epoch number alone). With several sources, an epoch draws from each source in proportion to its
   weight, repeating a small source's blocks as needed; :meth:`effective_epochs` says how many passes
   over each source a training run amounts to, and setup logs it.
6. **Resume**: the sampler's position (epoch, samples consumed), the batch-size ramp's position and
   the collator's random state (see ``collate_rng``) are this module's ``state_dict``, which Lightning
   stores in the checkpoint; after ``load_state_dict`` the next epoch iteration skips what was already
   consumed, so a resumed run sees exactly the batches the uninterrupted run would have. Every loader
   has its own ``torch.Generator``, so starting an epoch or a validation pass never draws from the
   global RNG (dropout's stream does not depend on where epochs begin or how often validation runs),
   and validation collates with a copy of the collator whose draws restart for every batch, keyed by
   the batch: it never advances training's masks, and masks a held-out batch the same way every time.
7. **Batch-size ramp** (``batch_ramp``, see ``batch_ramp``): batches grow from ``start`` to
   ``batch_size`` over the first optimizer steps.

Batches are ``{"input_ids": LongTensor (batch_size, seq_len)}``; with ``document_mask`` they also carry
``document_ids`` (batch_size, seq_len), each token's document within its block, so that the model keeps
attention (and next-token targets) inside each packed document. Other objectives pass ``collate_fn``:
any callable that turns a list of 1-D LongTensor blocks into a batch dict. Collators need token ids
(pad, EOS, mask, sentinels) that are only known once the tokenizer is: a collator *class* with a
``from_tokenizer(tokenizer)`` classmethod is built through it, and an instance with a
``bind_tokenizer(tokenizer)`` method has it called (a non-None return value replaces the instance).
"""

from __future__ import annotations

import importlib
import logging
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import ConcatDataset, DataLoader

from llm_modules.data.batch_ramp import BatchRamp, RampBatchSampler, Rows
from llm_modules.data.collate_rng import CollatorRNG, has_rng_state, validation_collate
from llm_modules.data.packing import (
    PackedBlocks,
    WithDocumentIds,
    is_validation,
    split_documents,
    stack_blocks,
)
from llm_modules.data.sampling import (
    ResumableSampler,
    mixture_order,
)
from llm_modules.data.source_spec import source_specs
from llm_modules.data.sources import (
    SourceFile,
    inputs_fingerprint,
    iter_parts,
    resolve_paths,
)
from llm_modules.data.text_reading import document_lines
from llm_modules.data.token_cache import TokenCache, build_token_cache
from llm_modules.data.tokenizer import Tokenizer
from llm_modules.registry import ConfigError
from llm_modules.data.replicas import data_parallel_split

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    """``$LLM_MODULES_CACHE``, else ``$XDG_CACHE_HOME/llm-modules``, else ``~/.cache/llm-modules``."""
    if os.environ.get("LLM_MODULES_CACHE"):
        return Path(os.environ["LLM_MODULES_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "llm-modules"


# ---- the data module ------------------------------------------------------------------------------------


@dataclass
class _Source:
    """One mixture component: its files, weight, token cache and packed splits."""

    name: str
    weight: float
    files: list[SourceFile]
    field: str
    text_field: str
    cache: TokenCache | None = None
    train: PackedBlocks | None = None
    val: PackedBlocks | None = None


class TextDataModule(L.LightningDataModule):
    """Token blocks from files, directories, globs, JSONL or ``python-stdlib``, with mixtures and resume.

    Args:
        paths: data entries (files, directories, globs, ``.jsonl`` files, ``python-stdlib``); each is one
            source when ``weights`` is given, else together they form one source.
        tokenizer: path to a SentencePiece ``.model``. When it does not exist (or is None) and
            ``train_tokenizer`` is true, one is trained from the training documents (and saved there,
            or under ``cache_dir/tokenizers``).
        seq_len: tokens per block.
        batch_size: blocks per batch (per process).
        val_fraction: share of documents held out for validation (0 disables validation).
        seed: fixes the split, the document order and every epoch's shuffle.
        cache_dir: where tokenizers and token caches live (default :func:`default_cache_dir`).
        num_workers: DataLoader worker processes.
        pattern: file-name globs used inside directories (default ``*.py, *.txt, *.md, *.rst, *.jsonl``).
        text_field: the JSONL key that holds the text.
        weights: sampling weights, one per ``paths`` entry (turns each entry into its own source).
        mixture: list of sources ``{paths: [...], weight: 0.7, name: ..., pattern: ..., text_field: ...}``;
            instead of ``paths``.
        samples_per_epoch: blocks per training epoch (default: all training blocks of all sources).
        train_tokenizer / vocab_size / tokenizer_type / num_sentinels / tokenizer_max_sentences:
            how a missing tokenizer is trained (``tokenizer_type``: bpe or unigram).
        collate_fn: turns a list of 1-D LongTensor blocks into a batch dict (default: causal LM stack);
            a callable, or the import path of one (``llm_modules.data.collators.MaskingCollator``), which
            is how YAML names a collator class whose token ids come from the tokenizer.
        collate_args: keyword arguments for a collator class named by ``collate_fn`` (e.g.
            ``{mlm_probability: 0.15}``).
        val_batch_size: batch size for validation (default ``batch_size``).
        batch_ramp: GPT-3-style ramp-up ``{start: 2, steps: 100, increment: 1}``: the per-process batch
            starts at ``start`` blocks and grows by ``increment`` in equal stages over the first ``steps``
            optimizer steps to ``batch_size`` (see ``llm_modules.data.batch_ramp``). Needs
            ``trainer.max_steps``.
        document_mask: packed documents do not attend to each other: batches carry ``document_ids``,
            the model masks attention across documents and restarts positions at each one, and no
            next-token target crosses a boundary (see ``llm_modules.nn.documents``). Off by default:
            every token then sees the whole block, the usual GPT-style packing.
    """

    def __init__(
        self,
        paths: list[str] | str | None = None,
        tokenizer: str | None = None,
        seq_len: int = 256,
        batch_size: int = 16,
        val_fraction: float = 0.05,
        seed: int = 1234,
        cache_dir: str | None = None,
        num_workers: int = 0,
        pattern: list[str] | str | None = None,
        text_field: str = "text",
        weights: list[float] | None = None,
        mixture: list[dict[str, Any]] | None = None,
        samples_per_epoch: int | None = None,
        train_tokenizer: bool = True,
        vocab_size: int = 8192,
        tokenizer_type: str = "bpe",
        num_sentinels: int = 100,
        tokenizer_max_sentences: int = 100_000,
        collate_fn: str | Callable[[list], dict] | None = None,
        collate_args: dict[str, Any] | None = None,
        val_batch_size: int | None = None,
        batch_ramp: dict[str, Any] | None = None,
        document_mask: bool = False,
    ):
        super().__init__()
        _positive("data.seq_len", seq_len)
        _positive("data.batch_size", batch_size)
        if val_batch_size is not None:
            _positive("data.val_batch_size", val_batch_size)
        if samples_per_epoch is not None:
            _positive("data.samples_per_epoch", samples_per_epoch)
        if not 0 <= val_fraction <= 1:
            raise ConfigError(f"data.val_fraction={val_fraction} must be in [0, 1]; e.g. 0.05 holds out 5% "
                              "of the documents, 1.0 evaluates on all of them (validate/test only)")
        if num_workers < 0:
            raise ConfigError(f"data.num_workers={num_workers} must be 0 or more")
        if tokenizer_type not in ("bpe", "unigram"):
            raise ConfigError(f"data.tokenizer_type {tokenizer_type!r} is not supported; choices: bpe, unigram")
        self.paths = [paths] if isinstance(paths, str) else (list(paths) if paths else None)
        self.tokenizer_path = tokenizer
        self.seq_len, self.batch_size = seq_len, batch_size
        self.val_batch_size = val_batch_size or batch_size
        self.val_fraction, self.seed = val_fraction, seed
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        self.num_workers = num_workers
        self.pattern, self.text_field = pattern, text_field
        self.weights, self.mixture = weights, mixture
        self.samples_per_epoch = samples_per_epoch
        self.train_tokenizer, self.vocab_size_setting = train_tokenizer, vocab_size
        self.tokenizer_type, self.num_sentinels = tokenizer_type, num_sentinels
        self.tokenizer_max_sentences = tokenizer_max_sentences
        self.collate_fn, self.collate_args = collate_fn, dict(collate_args or {})
        self.ramp = BatchRamp.parse(batch_ramp, batch_size)
        self.document_mask = bool(document_mask)
        # paths / weights / mixture are checked now, not at setup
        self._spec = source_specs(self.paths, self.weights, self.mixture, self.pattern, self.text_field)
        self._tokenizer: Tokenizer | None = None
        self._sources: list[_Source] | None = None
        self._sampler: ResumableSampler | None = None
        self._pending_state: dict | None = None
        self._bound_collate: Callable | None = None
        self._collate_rng = CollatorRNG()

    # ---- public figures ---------------------------------------------------------------------------------

    @property
    def tokenizer(self) -> Tokenizer:
        """The tokenizer; loaded, or trained and cached, on first access (usable before ``setup``)."""
        if self._tokenizer is None:
            self._tokenizer = self._load_or_train_tokenizer()
        return self._tokenizer

    @property
    def vocab_size(self) -> int:
        """The tokenizer's vocabulary size (what the model's ``vocab_size`` must match)."""
        return self.tokenizer.vocab_size

    @property
    def source_names(self) -> list[str]:
        return [s["name"] for s in self._spec]

    @property
    def bytes_per_token(self) -> float | None:
        """UTF-8 bytes per packed token of the validation split (training split without one).

        Bits per byte = loss (nats/token) / ln 2 / bytes_per_token. EOS tokens count as tokens, since
        the loss is averaged over them too.
        """
        if self._sources is None:
            return None
        splits = [s.val for s in self._sources if s.val is not None] or [s.train for s in self._sources]
        tokens = sum(p.stream_tokens for p in splits)
        return sum(p.num_bytes for p in splits) / tokens if tokens else None

    @property
    def token_caches(self) -> list[TokenCache]:
        """One token cache per source (after ``setup``)."""
        self._require_setup()
        return [s.cache for s in self._sources]

    @property
    def num_train_samples(self) -> int:
        """Blocks per training epoch."""
        self._require_setup()
        if self.val_fraction >= 1:
            raise ConfigError("data.val_fraction=1.0 holds out every document, so there is nothing to train on; "
                              "use it with validate/test, or lower it (e.g. 0.05) to fit")
        return self.samples_per_epoch or sum(len(s.train) for s in self._sources)

    @property
    def train_tokens_per_epoch(self) -> int:
        return self.num_train_samples * self.seq_len

    def effective_epochs(self, train_tokens: int | None = None) -> dict[str, float]:
        """Passes over each source's training split that ``train_tokens`` training tokens amount to.

        Default ``train_tokens``: the trainer's plan (max_steps, else max_epochs) when attached, else
        one epoch.
        """
        self._require_setup()
        if train_tokens is None:
            train_tokens = self._planned_train_tokens()
        weights = self._weights()
        return {s.name: train_tokens * w / (len(s.train) * self.seq_len) if len(s.train) else 0.0
                for s, w in zip(self._sources, weights)}

    # ---- Lightning hooks --------------------------------------------------------------------------------

    def prepare_data(self) -> None:
        """Train/load the tokenizer and fill the token caches (once per node; ``setup`` reuses them)."""
        tok = self.tokenizer
        for src in self._resolve_sources():
            build_token_cache(src.files, tok, self.cache_dir, settings={"text_field": src.text_field},
                              field=src.field)

    def setup(self, stage: str | None = None) -> None:
        if self._sources is not None:
            return
        tok = self.tokenizer
        if tok.eos_id < 0:
            raise ConfigError(f"data.tokenizer: {tok.source!r} has no end-of-sequence piece; packing puts EOS "
                              "between documents, so use a tokenizer with one")
        sources = self._resolve_sources()
        for src in sources:
            src.cache = build_token_cache(src.files, tok, self.cache_dir,
                                          settings={"text_field": src.text_field}, field=src.field)
            train_idx, val_idx = split_documents(src.cache.source_ids, self.val_fraction, self.seed)
            order = np.random.default_rng([self.seed, 0x5EED]).permutation(train_idx)
            src.train = PackedBlocks(src.cache, order, self.seq_len, tok.eos_id)
            src.val = PackedBlocks(src.cache, val_idx, self.seq_len, tok.eos_id) if len(val_idx) else None
            if len(src.train) == 0 and self.val_fraction < 1:
                raise ConfigError(
                    f"data.seq_len={self.seq_len} is longer than the training split of {src.name!r} "
                    f"({src.train.stream_tokens} tokens); lower seq_len or add data"
                )
            if src.val is not None and len(src.val) == 0:
                raise ConfigError(
                    f"data.val_fraction={self.val_fraction}: the validation split of {src.name!r} holds "
                    f"{src.val.stream_tokens} tokens, fewer than data.seq_len={self.seq_len}; raise "
                    "val_fraction or lower seq_len"
                )
        self._sources = sources
        self._log_summary()

    def train_dataloader(self) -> DataLoader:
        self._require_setup()
        trainer = self._trainer_or_none()
        world, rank = data_parallel_split(trainer)  # tensor-parallel ranks share their batch
        total = self.num_train_samples
        counts = [len(s.train) for s in self._sources]
        weights, seed = self._weights(), self.seed
        order = lambda epoch: mixture_order(counts, weights, total, seed, epoch)
        dataset = ConcatDataset([s.train for s in self._sources])
        collate = self._collate_rng.attach(self._collate())
        if self.ramp is None:
            self._sampler = ResumableSampler(order, total, world, rank)
            loader = self._loader(dataset, self.batch_size, collate, sampler=self._sampler, drop_last=True)
        else:
            self._check_ramp_plan(trainer)
            accumulate = trainer.accumulate_grad_batches if trainer is not None else 1
            self._sampler = RampBatchSampler(order, total, self.ramp, accumulate, world, rank)
            loader = self._loader(Rows(dataset), None, collate, sampler=self._sampler)  # it yields batches
        if self._pending_state is not None:
            self._apply_state(self._pending_state)
        return loader

    def val_dataloader(self):
        self._require_setup()
        vals = [s.val for s in self._sources if s.val is not None]
        if not vals:
            return []
        collate = self._collate()
        if has_rng_state(collate):  # its own draws, the same for a batch on every pass (collate_rng)
            collate = validation_collate(collate)
        return self._loader(ConcatDataset(vals), self.val_batch_size, collate, shuffle=False)

    def test_dataloader(self):
        """The held-out documents again: there is no separate test split."""
        return self.val_dataloader()

    def predict_dataloader(self):
        """Predictions run over the held-out documents, like ``test``."""
        return self.val_dataloader()

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Count training batches as they reach the model (not as workers prefetch them)."""
        trainer = self._trainer_or_none()
        if self._sampler is not None and trainer is not None and trainer.training:
            if isinstance(self._sampler, RampBatchSampler):
                self._sampler.consume_batch()
            else:
                self._sampler.samples_consumed += self.batch_size * self._sampler.num_replicas
        return batch

    def state_dict(self) -> dict[str, Any]:
        """Where training stands in the data: saved in every checkpoint by Lightning."""
        ramp = None
        if self._sampler is not None:
            epoch, consumed = self._sampler.position()
            if isinstance(self._sampler, RampBatchSampler):
                start = self._sampler.epoch_start_batch if consumed else self._sampler.batches_consumed
                ramp = {"batches_consumed": self._sampler.batches_consumed, "epoch_start_batch": start}
        elif self._pending_state is not None:
            epoch, consumed = self._pending_state["epoch"], self._pending_state["samples_consumed"]
            ramp = self._pending_state.get("batch_ramp")
        else:
            epoch, consumed = 0, 0
        state = {
            "epoch": int(epoch),
            "samples_consumed": int(consumed),
            "seed": int(self.seed),
            "tokenizer_fingerprint": self._tokenizer.fingerprint if self._tokenizer is not None else None,
        }
        if ramp is not None:
            state["batch_ramp"] = {k: int(v) for k, v in ramp.items()}
        collate_state = self._collate_rng.state()
        if collate_state is not None:
            state["collate_state"] = collate_state
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume: the next training epoch iteration continues where ``state`` stopped."""
        if state.get("seed", self.seed) != self.seed:
            log.warning("data: resuming with seed %s but the checkpoint used %s; the sample order differs",
                        self.seed, state["seed"])
        fp = state.get("tokenizer_fingerprint")
        if fp and self._tokenizer is not None and fp != self._tokenizer.fingerprint:
            log.warning("data: the checkpoint was trained with a different tokenizer (fingerprint %s)", fp[:12])
        # Lightning warns that a mid-epoch resume is unreliable unless the DataLoader itself is stateful;
        # here the position travels in this module's state instead, so the warning does not apply.
        warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch")
        self._pending_state = {"epoch": int(state.get("epoch", 0)),
                               "samples_consumed": int(state.get("samples_consumed", 0)),
                               "batch_ramp": state.get("batch_ramp")}
        self._collate_rng.load(state.get("collate_state"), self.num_workers)
        if self._sampler is not None:
            self._apply_state(self._pending_state)

    # ---- internals --------------------------------------------------------------------------------------

    def _apply_state(self, state: dict) -> None:
        self._sampler.resume(state["epoch"], state["samples_consumed"])
        if isinstance(self._sampler, RampBatchSampler):
            self._sampler.resume_ramp(*self._ramp_position(state))
        self._pending_state = None

    def _ramp_position(self, state: dict) -> tuple[int, int]:
        """(batches consumed, batches consumed when the epoch began) from a checkpoint's data state.

        A checkpoint of a run without the ramp has no such entry; it trained at the constant
        ``batch_size``, so the position follows from the trainer's step and the epoch's samples.
        """
        if state.get("batch_ramp"):
            return int(state["batch_ramp"]["batches_consumed"]), int(state["batch_ramp"]["epoch_start_batch"])
        trainer = self._trainer_or_none()
        done = trainer.global_step * trainer.accumulate_grad_batches if trainer is not None else 0
        in_epoch = state["samples_consumed"] // (self.batch_size * self._sampler.num_replicas)
        return done, max(0, done - in_epoch)

    def _check_ramp_plan(self, trainer) -> None:
        """The ramp changes how many batches an epoch holds while it lasts; refuse the plans that
        Lightning would then get wrong (it measures the epoch length once, at the start)."""
        if trainer is None:
            return
        if trainer.max_steps is None or trainer.max_steps < 0:
            raise ConfigError("data.batch_ramp is counted in optimizer steps and makes the first epochs longer in "
                              "batches than the rest; set trainer.max_steps (the total the learning-rate schedule "
                              "and the ramp are planned against)")
        by_fraction = isinstance(trainer.val_check_interval, float)
        if (trainer.check_val_every_n_epoch is not None and by_fraction and self.val_fraction > 0
                and getattr(trainer, "_val_check_time_interval", None) is None and trainer.limit_val_batches != 0):
            raise ConfigError("data.batch_ramp: validation every fraction of an epoch "
                              f"(trainer.val_check_interval={trainer.val_check_interval}) would use the first "
                              "epoch's length for all; set trainer.check_val_every_n_epoch: null and "
                              "trainer.val_check_interval to a number of steps")

    def _loader(self, dataset, batch_size: int | None, collate: Callable, **kwargs) -> DataLoader:
        if self.document_mask:
            collate = WithDocumentIds(collate, self.tokenizer.eos_id)
        # Its own generator: a new iterator draws its worker base seed from here, not from the global RNG.
        return DataLoader(dataset, batch_size=batch_size, collate_fn=collate, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0,
                          generator=torch.Generator().manual_seed(self.seed), **kwargs)

    def _collate(self) -> Callable:
        if self.collate_fn is None:
            return stack_blocks
        if self._bound_collate is None:
            fn = _import(self.collate_fn) if isinstance(self.collate_fn, str) else self.collate_fn
            if isinstance(fn, type):  # a collator class: built here, its token ids from the tokenizer
                try:
                    fn = (fn.from_tokenizer(self.tokenizer, **self.collate_args) if hasattr(fn, "from_tokenizer")
                          else fn(**self.collate_args))
                except (TypeError, ValueError) as err:
                    raise ConfigError(f"data.collate_fn: cannot build {fn.__name__} ({err}); check "
                                      "data.collate_args") from err
            elif self.collate_args:
                raise ConfigError("data.collate_args only applies when data.collate_fn names a class")
            else:
                bind = getattr(fn, "bind_tokenizer", None)
                if callable(bind):
                    fn = bind(self.tokenizer) or fn
            self._bound_collate = fn
        return self._bound_collate

    def _trainer_or_none(self):
        return getattr(self, "trainer", None)

    def _require_setup(self) -> None:
        if self._sources is None:
            raise RuntimeError("TextDataModule.setup() has not run yet; call dm.setup('fit') first")

    def _weights(self) -> list[float]:
        total = sum(s["weight"] for s in self._spec)
        return [s["weight"] / total for s in self._spec]

    def _planned_train_tokens(self) -> int:
        trainer = self._trainer_or_none()
        per_epoch = self.train_tokens_per_epoch
        if trainer is None:
            return per_epoch
        world = data_parallel_split(trainer)[0]
        if trainer.max_steps and trainer.max_steps > 0:
            per_slot = self.ramp.samples_in_steps(trainer.max_steps) if self.ramp else trainer.max_steps * self.batch_size
            return per_slot * trainer.accumulate_grad_batches * self.seq_len * world
        if trainer.max_epochs and trainer.max_epochs > 0:
            return trainer.max_epochs * per_epoch
        return per_epoch

    def _resolve_sources(self) -> list[_Source]:
        out = []
        for spec in self._spec:
            files = resolve_paths(spec["paths"], pattern=spec["pattern"], text_field=spec["text_field"],
                                  field=spec["field"], first_index=spec.get("index", 0))
            out.append(_Source(spec["name"], spec["weight"], files, spec["field"], spec["text_field"]))
        return out

    def _load_or_train_tokenizer(self) -> Tokenizer:
        path = Path(self.tokenizer_path).expanduser() if self.tokenizer_path else None
        if path is None and (base := self._base_tokenizer()) is not None:
            return base
        if path is not None and not path.exists() and path.suffix != ".model":
            path = path.with_name(path.name + ".model")  # Tokenizer.train saves under this name
        if path is not None and path.exists():
            from llm_modules.data.hf_tokenizer import load_tokenizer

            return load_tokenizer(path, field="data.tokenizer")  # a .model, a tokenizer.json, or a folder
        if not self.train_tokenizer:
            if path is None:
                raise ConfigError("data.tokenizer: no tokenizer given; give the path to a SentencePiece .model "
                                  "or set data.train_tokenizer: true to train one on the data")
            raise ConfigError(f"data.tokenizer: {self.tokenizer_path!r} does not exist; fix the path or set "
                              "data.train_tokenizer: true to train one there")
        sources = self._resolve_sources()
        settings = {"vocab_size": self.vocab_size_setting, "model_type": self.tokenizer_type,
                    "num_sentinels": self.num_sentinels, "max_sentences": self.tokenizer_max_sentences,
                    "val_fraction": self.val_fraction, "seed": self.seed}
        if path is None:
            key = inputs_fingerprint([f for s in sources for f in s.files], **settings)[:32]
            path = self.cache_dir / "tokenizers" / f"{key}.model"
            if path.exists():
                log.info("data: reusing tokenizer %s", path)
                return Tokenizer.load(path, field="data.tokenizer")
        log.info("data: training a %s tokenizer (vocab %d) on the training documents", self.tokenizer_type,
                 self.vocab_size_setting)
        texts = (line for s in sources for source_id, parts in iter_parts(s.files)  # lines: a long file streams
                 if not is_validation(source_id, self.val_fraction, self.seed) for line in document_lines(parts))
        tok = Tokenizer.train(texts, path, vocab_size=self.vocab_size_setting, model_type=self.tokenizer_type,
                              num_sentinels=self.num_sentinels, max_sentences=self.tokenizer_max_sentences,
                              seed=self.seed, field="data.vocab_size", inputs_field="data.paths")
        tok.source = str(path)
        log.info("data: tokenizer saved to %s", path)
        return tok

    def _base_tokenizer(self):
        """The tokenizer of the model's ``init_from`` base (a checkpoint's, or a Hugging Face folder's),
        when the model started from one: its ids are what the base weights read, so a tokenizer
        trained here would give them other meanings. None without a base or a trainer."""
        trainer = getattr(self, "trainer", None)
        model = getattr(trainer, "lightning_module", None) if trainer is not None else None
        if model is None or getattr(model, "init_from", None) is None:
            return None
        tokenizer = getattr(model, "tokenizer", None)
        if tokenizer is not None:
            log.info("data: tokenizing with the tokenizer of model.init_from=%s", model.init_from)
        return tokenizer

    def _log_summary(self) -> None:
        planned = self._planned_train_tokens() if self.val_fraction < 1 else 0
        epochs = self.effective_epochs(planned)
        for src, w in zip(self._sources, self._weights()):
            val_docs = src.val.num_documents if src.val is not None else 0
            log.info(
                "data source %r: weight %.2f, %d documents (%d held out), %s training tokens in %d blocks; "
                "%.2f epochs over %s planned training tokens",
                src.name, w, src.cache.num_documents, val_docs, f"{src.train.stream_tokens:,}", len(src.train),
                epochs[src.name], f"{planned:,}",
            )
        bpt = self.bytes_per_token
        if bpt:
            log.info("data: %.3f bytes per token (for bits per byte)", bpt)


def _import(path: str) -> Any:
    """``package.module.Name`` -> the object, with a ConfigError that names the field."""
    module_name, _, attr = path.strip().rpartition(".")
    if not module_name:
        raise ConfigError(f"data.collate_fn {path!r}: give an import path like llm_modules.data.collators.MaskingCollator")
    try:
        obj = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"data.collate_fn {path!r} cannot be imported ({err}); check the spelling") from None
    if not callable(obj):
        raise ConfigError(f"data.collate_fn {path!r} is not callable")
    return obj


def _positive(field: str, value: int) -> None:
    if not isinstance(value, int) or value < 1:
        raise ConfigError(f"{field}={value!r} must be a positive integer")
