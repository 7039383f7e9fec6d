"""pass@k (llm_modules.evaluation.passk) equals the closed form 1 - C(n-c,k)/C(n,k) on constructed cases,
and the probability counted by brute force over every k-subset of a small sample set."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import pytest

from llm_modules.evaluation.passk import mean_pass_at_k, pass_at_k


def closed_form(n: int, c: int, k: int) -> float:
    return float(1 - Fraction(math.comb(n - c, k), math.comb(n, k)))


@pytest.mark.parametrize("n,c,k", [
    (10, 0, 1), (10, 0, 5),          # nothing correct: 0
    (10, 10, 1), (10, 10, 10),       # everything correct: 1
    (10, 8, 5), (10, 6, 5),          # k > n - c: every draw holds a correct sample
    (5, 2, 5), (7, 1, 7),            # n = k: 1 as soon as one is correct
    (10, 1, 1), (10, 3, 2), (20, 5, 10),
    (200, 1, 1), (200, 13, 10), (200, 13, 100), (1000, 7, 50),  # large n: the binomials overflow floats
])
def test_equals_the_closed_form(n, c, k):
    assert pass_at_k(n, c, k) == pytest.approx(closed_form(n, c, k), abs=1e-12)


def test_edge_values_exactly():
    assert pass_at_k(10, 0, 3) == 0.0
    assert pass_at_k(10, 10, 3) == 1.0
    assert pass_at_k(10, 8, 5) == 1.0
    assert pass_at_k(10, 1, 1) == pytest.approx(0.1)
    assert pass_at_k(200, 13, 10) > 0.0 and math.isfinite(pass_at_k(5000, 1, 1000))


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6])
def test_equals_brute_force_over_subsets(n):
    for c in range(n + 1):
        samples = [True] * c + [False] * (n - c)
        for k in range(1, n + 1):
            subsets = list(itertools.combinations(samples, k))
            expected = sum(any(s) for s in subsets) / len(subsets)
            assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_mean_over_problems():
    counts = [(10, 0), (10, 3), (10, 10)]
    assert mean_pass_at_k(counts, 2) == pytest.approx(sum(closed_form(n, c, 2) for n, c in counts) / 3)


@pytest.mark.parametrize("n,c,k", [(5, 6, 1), (5, -1, 1), (5, 2, 6), (5, 2, 0)])
def test_rejects_impossible_counts(n, c, k):
    with pytest.raises(ValueError, match="pass@k"):
        pass_at_k(n, c, k)
    with pytest.raises(ValueError, match="no problems"):
        mean_pass_at_k([], 1)
