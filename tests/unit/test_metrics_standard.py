"""Generation metrics that compare with published numbers: BLEU is sacreBLEU's (13a tokenization),
ROUGE can stem words like the reference implementations, and a missing stemmer package is one clear
error, not a traceback at the first validation."""

from __future__ import annotations

import importlib.util

import pytest
from torchmetrics.text import BLEUScore

from llm_modules.registry import ConfigError
from llm_modules.training.evaluation import Bleu, GenerationEvalConfig, GenerationMetrics, RougeF

# Punctuation attached to words is where a whitespace-split BLEU and sacreBLEU part ways.
PREDS = ["The cat sat on the mat.", "Hello, world! How are you?",
         "It's 3.5 km (about 2 miles) away, isn't it?", 'Dr. Smith said: "No."']
REFS = ["The cat sat on a mat.", "Hello, world! How are you doing?",
        "It's 3.5 km (about two miles) away, isn't it?", 'Dr. Smith said: "Yes."']
# sacrebleu 2.6.0: sacrebleu.corpus_bleu(PREDS, [REFS]).score (default: 13a, no lowercasing)
SACREBLEU_SCORE = 69.87669715154823


def _bleu(preds, refs) -> float:
    metric = Bleu()
    metric.update(preds, refs)
    return 100 * float(metric.compute())


def test_bleu_equals_sacrebleu_on_punctuated_text():
    ours = _bleu(PREDS, REFS)
    assert round(ours, 2) == round(SACREBLEU_SCORE, 2)  # sacrebleu prints 2 decimals at most
    assert ours == pytest.approx(SACREBLEU_SCORE, abs=1e-4)  # float32 states: 1e-6 of the score
    whitespace = BLEUScore()  # what evaluation computed before: punctuation glued to words
    whitespace.update(PREDS, [[r] for r in REFS])
    assert 100 * float(whitespace.compute()) < ours - 10


def test_bleu_matches_the_sacrebleu_package_when_installed():
    sacrebleu = pytest.importorskip("sacrebleu")
    for preds, refs in [(PREDS, REFS), (PREDS[:2], REFS[:2]), (REFS, PREDS)]:
        expected = sacrebleu.corpus_bleu(preds, [refs]).score
        assert _bleu(preds, refs) == pytest.approx(expected, abs=1e-4)
    assert sacrebleu.corpus_bleu(PREDS, [REFS]).score == pytest.approx(SACREBLEU_SCORE, abs=1e-9)


def test_rouge_stemmer_matches_inflected_words():
    pytest.importorskip("nltk")
    plain, stemmed = RougeF("rouge1"), RougeF("rouge1", use_stemmer=True)
    for m in (plain, stemmed):
        m.update(["the cats were running"], ["the cat runs"])
    # stemmed: "the cat were run" vs "the cat run": P = 3/4, R = 3/3
    assert float(stemmed.compute()) == pytest.approx(6 / 7, abs=1e-6)
    assert float(plain.compute()) == pytest.approx(2 / 7, abs=1e-6)  # only "the" matches


def test_rouge_stemmer_is_a_setting_of_the_evaluation():
    pytest.importorskip("nltk")
    metrics = GenerationMetrics(GenerationEvalConfig(metrics=["rouge", "bleu"], rouge_stemmer=True))
    assert all(metrics.metrics[f"val_{k}"].stemmer is not None for k in ("rouge1", "rouge2", "rougeL"))
    default = GenerationMetrics(GenerationEvalConfig(metrics=["rouge"]))
    assert default.metrics["val_rouge1"].stemmer is None


def test_rouge_stemmer_without_nltk_is_one_clear_error(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "nltk" else real(name, *a))
    with pytest.raises(ConfigError, match=r"model.evaluation.rouge_stemmer needs the nltk package.*pip install nltk"):
        GenerationEvalConfig(metrics=["rouge"], rouge_stemmer=True)
    GenerationEvalConfig(metrics=["rouge"])  # without the stemmer nltk is not needed


def test_ipo_regresses_the_gap_of_summed_log_probabilities_as_the_docs_state():
    """The convention docs/tutorials/align.md and ``dpo_loss`` state: IPO's h is built from summed
    sequence log-probabilities (the paper), not per-token means (TRL), so a response twice as long
    with the same per-token log-probabilities has twice the gap."""
    import torch

    from llm_modules.alignment.losses import dpo_loss, sequence_logprobs

    torch.manual_seed(0)
    logits = torch.randn(1, 4, 11)
    labels = torch.tensor([[-100, 3, 7, 5]])
    short = sequence_logprobs(logits, labels)
    long = sequence_logprobs(logits.repeat(1, 2, 1), labels.repeat(1, 2))
    assert long.item() == pytest.approx(2 * short.item(), rel=1e-6)
    ref = torch.zeros(1)
    beta = 0.1
    for chosen, tokens in ((short, 3), (long, 6)):
        ipo = dpo_loss(chosen, ref - 1.0, ref, ref, beta, loss_type="ipo").loss.item()
        h = chosen.item() + 1.0  # summed gap
        assert ipo == pytest.approx((h - 1 / (2 * beta)) ** 2, rel=1e-6)
        assert ipo != pytest.approx((h / tokens - 1 / (2 * beta)) ** 2, rel=1e-3)  # not TRL's per-token mean
    text = (__import__("pathlib").Path(__file__).resolve().parents[2] / "docs/tutorials/align.md").read_text()
    assert "IPO sums, TRL averages" in text
