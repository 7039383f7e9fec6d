"""Demonstration selection and order on their own (llm_modules.evaluation.prompting.bm25/selection):
BM25 equals its closed form, k-nearest picks the lexical neighbour, MMR trades near-duplicates for
diversity, embedding similarity is cosine of the given vectors, most similar goes last."""

from __future__ import annotations

import math
import random

import pytest
import torch

from llm_modules.evaluation.prompting import selection
from llm_modules.evaluation.prompting.bm25 import BM25, tokenize


def test_bm25_scores_equal_the_closed_form_on_a_tiny_corpus():
    corpus = ["The cat sat", "the cat, the CAT!", "dogs bark loudly at night"]
    k1, b = 1.5, 0.75
    got = BM25(corpus, k1=k1, b=b).scores("cat bark")
    assert tokenize(corpus[1]) == ["the", "cat", "the", "cat"]
    avgdl = (3 + 4 + 5) / 3
    idf_cat = math.log(1 + (3 - 2 + 0.5) / (2 + 0.5))   # in 2 of 3 documents
    idf_bark = math.log(1 + (3 - 1 + 0.5) / (1 + 0.5))  # in 1 of 3

    def term(idf, tf, length):
        return idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * length / avgdl))

    expected = [term(idf_cat, 1, 3), term(idf_cat, 2, 4), term(idf_bark, 1, 5)]
    assert got == pytest.approx(expected, rel=1e-12)
    # a repeated query word counts each time; an unknown word adds nothing
    scores = BM25(corpus).scores("cat cat zebra")
    assert scores[0] == pytest.approx(2 * expected[0]) and scores[2] == 0.0


def test_top_k_picks_the_lexical_neighbour():
    pool = ["stocks fell on monday", "the cat sat on the mat", "rain all day", "a dog barked"]
    sim = selection.BM25Similarity(pool)
    relevance = sim.query("where did the cat sit, on a mat?", range(len(pool)))
    assert selection.nearest(relevance, 1) == [1]
    assert max(relevance.values()) == 1.0  # scaled to 0..1 by the best candidate
    assert selection.nearest(sim.query("dog barked loudly", range(len(pool))), 2)[0] == 3


def test_mmr_picks_a_diverse_set_where_plain_knn_picks_near_duplicates():
    pool = ["cat mat cat mat", "cat mat cat mat cat", "dog park", "weather report"]
    sim = selection.BM25Similarity(pool)
    relevance = sim.query("cat mat dog", range(len(pool)))
    knn = selection.nearest(relevance, 2)
    assert sorted(knn) == [0, 1]  # the two near-duplicates
    diverse = selection.mmr(relevance, sim.between, 2, lam=0.5)
    assert diverse[0] in (0, 1) and diverse[1] == 2  # the second pick covers 'dog' instead
    assert selection.mmr(relevance, sim.between, 2, lam=1.0) == knn  # lambda 1: relevance only
    assert sim.between(1, 0) > 0.9 and sim.between(2, 0) == 0.0  # doc 0 as the query: 1 is a near-duplicate


def test_embedding_knn_is_cosine_of_the_given_vectors():
    vectors = {"a": [1.0, 0.0], "b": [0.0, 1.0], "c": [0.7, 0.7], "q": [0.9, 0.1]}
    calls = []

    def embed(texts):
        calls.append(list(texts))
        return torch.tensor([vectors[t] for t in texts])

    sim = selection.EmbeddingSimilarity(["a", "b", "c"], embed)
    relevance = sim.query("q", [0, 1, 2])
    q = torch.tensor(vectors["q"]) / torch.tensor(vectors["q"]).norm()
    assert relevance[2] == pytest.approx(float(q @ torch.tensor([0.7, 0.7]) / math.sqrt(0.98)))
    assert selection.nearest(relevance, 2) == [0, 2]
    sim.query("q", [0, 1])
    assert calls == [["a", "b", "c"], ["q"]]  # the pool once, each query once
    assert sim.between(0, 1) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="one vector per text"):
        selection.EmbeddingSimilarity(["a"], lambda texts: torch.zeros(3))


def test_ordering_puts_the_most_similar_last_and_random_order_follows_the_seed():
    relevance = {0: 0.2, 1: 0.9, 2: 0.5, 3: 0.1}
    assert selection.similar_last([1, 2, 0, 3], relevance) == [3, 0, 2, 1]
    first = selection.shuffled(range(8), random.Random("1:x"))
    assert first == selection.shuffled(range(8), random.Random("1:x"))
    assert any(selection.shuffled(range(8), random.Random(f"{s}:x")) != first for s in (2, 3))
    draws = {tuple(selection.drawn(range(10), 3, random.Random(f"{s}:x"))) for s in range(5)}
    assert len(draws) > 1 and all(len(set(d)) == 3 for d in draws)
