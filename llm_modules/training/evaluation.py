"""Generation metrics in validation and test: BLEU, ROUGE and exact match against reference texts.

Loss, perplexity and bits per byte need only the batch; tasks with references (Seq2Seq pairs,
instructions) are judged by what the model *writes*, so when ``GenerationEvalConfig.metrics`` is
non-empty and a val/test batch carries ``prompt_ids`` and ``references`` (``PairsDataModule`` makes
such batches), the model generates from the prompts, the new tokens are decoded with its tokenizer
and scored. Generation is slow next to a forward pass, so only the first ``max_batches`` batches of
each pass are generated for, and the sanity check before training is skipped.

The metrics are torchmetrics ``Metric`` objects logged as objects, so Lightning accumulates them over
the pass and reduces their states across processes (sums of counts, lists of scores) before computing:
the figure is the whole data set's, not an average of per-process averages.

BLEU is sacreBLEU's (Post, 2018): corpus BLEU-4 on text tokenized by its standard ``13a`` tokenizer
(punctuation split from words, as the WMT ``mteval-v13a`` script does), through torchmetrics'
``SacreBLEUScore``. A plain whitespace split would score "mat." against "mat ." as a miss, which put
the figure 8.9 points below published numbers on punctuated text; with ``13a`` it equals what the
``sacrebleu`` command prints for the same sentences, so it can be compared with papers.
"""

from __future__ import annotations

import difflib
import importlib.util
from dataclasses import dataclass, field

import torch
from torch import nn
from torchmetrics import Metric
from torchmetrics.text import ROUGEScore, SacreBLEUScore

from llm_modules.generation.prompts import new_tokens, stop_ids
from llm_modules.registry import ConfigError

METRICS = ("bleu", "rouge", "exact_match")
ROUGE_KEYS = ("rouge1", "rouge2", "rougeL")
SPLITS = ("val", "test")


@dataclass
class GenerationEvalConfig:
    """Plain data (``--model.evaluation.*``): which generation metrics validation and test report.

    ``metrics``: any of ``bleu`` (corpus BLEU-4 with sacreBLEU's standard ``13a`` tokenization, so it
    compares with published numbers), ``rouge`` (logged as rouge1, rouge2, rougeL F-measures) and
    ``exact_match`` (whitespace-normalized equality); empty (the default) turns generation in
    evaluation off. ``rouge_stemmer``: ROUGE matches words after Porter stemming ("cats" = "cat"),
    as Lin's ROUGE-1.5.5 ``-m`` and Google's ``rouge_score`` ``use_stemmer=True`` do, which most
    summarization papers report (needs the ``nltk`` package). ``max_new_tokens`` / ``num_beams``: how each answer
    is generated (greedy when ``num_beams`` is 1). ``max_batches``: batches per validation or test pass
    that are generated for (None: all of them), which keeps a validation during training cheap.
    """

    metrics: list[str] = field(default_factory=list)
    max_new_tokens: int = 32
    num_beams: int = 1
    max_batches: int | None = 4
    rouge_stemmer: bool = False

    def __post_init__(self) -> None:
        self.metrics = list(self.metrics or [])
        for name in self.metrics:
            if name not in METRICS:
                close = difflib.get_close_matches(str(name), METRICS, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ConfigError(f"model.evaluation.metrics: unknown metric {name!r}{hint}; choices: "
                                  f"{', '.join(METRICS)}")
        for name in ("max_new_tokens", "num_beams"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"model.evaluation.{name}={getattr(self, name)} must be 1 or more")
        if self.max_batches is not None and self.max_batches < 1:
            raise ConfigError(f"model.evaluation.max_batches={self.max_batches} must be 1 or more, or null for "
                              "every batch (to turn generation off, leave model.evaluation.metrics empty)")
        if self.rouge_stemmer and importlib.util.find_spec("nltk") is None:
            raise ConfigError("model.evaluation.rouge_stemmer needs the nltk package (its Porter stemmer), which is "
                              "not installed; pip install nltk (or the 'metrics' extra), or set rouge_stemmer false")

    @property
    def enabled(self) -> bool:
        return bool(self.metrics)

    def logged_names(self) -> list[str]:
        """The names logged under ``val/`` and ``test/``: ``rouge`` stands for its three keys."""
        names: list[str] = []
        for name in dict.fromkeys(self.metrics):
            names += list(ROUGE_KEYS) if name == "rouge" else [name]
        return names


def normalize_whitespace(text: str) -> str:
    return " ".join(text.split())


class ExactMatch(Metric):
    """Share of predictions equal to their reference once runs of whitespace are one space and the
    ends are stripped (formatting differences are not the model's answer being wrong)."""

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("correct", default=torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0.0), dist_reduce_fx="sum")

    def update(self, preds: list[str], target: list[str]) -> None:
        if len(preds) != len(target):
            raise ValueError(f"exact match: {len(preds)} predictions for {len(target)} references")
        self.correct += sum(normalize_whitespace(p) == normalize_whitespace(t) for p, t in zip(preds, target))
        self.total += len(target)

    def compute(self) -> torch.Tensor:
        return self.correct / self.total if self.total > 0 else torch.zeros_like(self.correct)


class RougeF(ROUGEScore):
    """One ROUGE key's F-measure as a scalar (``ROUGEScore`` computes a dict, which cannot be logged
    as a Metric object)."""

    def __init__(self, key: str, **kwargs) -> None:
        super().__init__(rouge_keys=(key,), **kwargs)
        self.key = key

    def compute(self) -> torch.Tensor:
        return super().compute()[f"{self.key}_fmeasure"]


class Bleu(SacreBLEUScore):
    """sacreBLEU (corpus BLEU-4, ``13a`` tokenization, no lowercasing) with one reference per prediction
    (``update(preds, references)``, both lists of strings)."""

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("tokenize", "13a")
        super().__init__(**kwargs)

    def update(self, preds: list[str], target: list[str]) -> None:
        super().update(preds, [[t] for t in target])


def build_metric(name: str, config: GenerationEvalConfig | None = None) -> Metric:
    if name == "bleu":
        return Bleu()
    if name == "exact_match":
        return ExactMatch()
    return RougeF(name, use_stemmer=bool(config and config.rouge_stemmer))


class GenerationMetrics(nn.Module):
    """The metric objects of one model, per split; ``LanguageModel`` owns one when metrics are on."""

    def __init__(self, config: GenerationEvalConfig) -> None:
        super().__init__()
        self.config = config
        # ModuleDict keys may not contain "/" or "."; the logged names do.
        self.metrics = nn.ModuleDict({f"{split}_{name}": build_metric(name, config)
                                      for split in SPLITS for name in config.logged_names()})

    def step(self, lm, batch: dict, batch_idx: int, split: str) -> None:
        """Generate for a batch that has prompts and references, update and log the metrics."""
        if "prompt_ids" not in batch or "references" not in batch:
            return
        if lm.trainer.sanity_checking:
            return
        if self.config.max_batches is not None and batch_idx >= self.config.max_batches:
            return
        predictions = generate_texts(lm, batch, self.config)
        references = list(batch["references"])
        # Lightning finds a logged Metric's attribute through named_modules, which drops metrics that
        # compare equal (torchmetrics hashes a metric by its states: two empty ROUGEs are "duplicates"),
        # so the attribute is named here.
        owner = next(name for name, child in lm.named_children() if child is self)
        for name in self.config.logged_names():
            key = f"{split}_{name}"
            metric = self.metrics[key]
            metric.update(predictions, references)
            lm.log(f"{split}/{name}", metric, on_step=False, on_epoch=True, batch_size=len(references),
                   metric_attribute=f"{owner}.metrics.{key}")


def generate_texts(lm, batch: dict, config: GenerationEvalConfig) -> list[str]:
    """The model's answers to ``batch["prompt_ids"]``, decoded without the prompt.

    ``generate`` returns the prefix it started from (the left-padded prompt for decoders, the
    decoder start token for a Seq2SeqLM) followed by the new tokens; only the new tokens, up to the
    first EOS, are the answer.
    """
    tokenizer = lm.tokenizer
    if tokenizer is None:
        tokenizer = getattr(lm._datamodule(), "tokenizer", None)
    if tokenizer is None:
        raise ConfigError("model.evaluation.metrics needs a tokenizer to decode generations; the model carries "
                          "none and the data module has none (give data.tokenizer)")
    prompt_ids, prompt_mask = batch["prompt_ids"], batch.get("prompt_mask")
    stops = stop_ids(lm, tokenizer)  # the model's generation config's EOS list, else its EOS (generation.defaults)
    out = lm.generate(prompt_ids, prompt_mask, max_new_tokens=config.max_new_tokens, num_beams=config.num_beams,
                      eos_token_id=stops)
    rows = new_tokens(lm, out, prompt_ids.shape[1], stops, lm.config.pad_token_id)
    return [tokenizer.decode([t for t in row if t not in stops]) for row in rows]
