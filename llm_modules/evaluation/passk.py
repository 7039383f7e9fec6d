"""pass@k, the unbiased estimator of Chen et al. (2021, "Evaluating Large Language Models Trained on Code").

For one problem with ``n`` generated samples of which ``c`` pass the tests, the chance that at least one
of ``k`` samples drawn without replacement passes is ``1 - C(n-c, k) / C(n, k)``. The binomials overflow
floats for realistic ``n``; the same ratio is the product ``prod_{i=n-c+1}^{n} (1 - k/i)``, which stays
in [0, 1] at every step. A benchmark's pass@k is the mean over problems.
"""

from __future__ import annotations

import math
from collections.abc import Iterable


def pass_at_k(n: int, c: int, k: int) -> float:
    """The probability that at least one of ``k`` of the ``n`` samples (``c`` correct) is correct."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:  # every draw of k samples contains a correct one
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def mean_pass_at_k(counts: Iterable[tuple[int, int]], k: int) -> float:
    """pass@k over problems: the mean of ``pass_at_k(n, c, k)`` over their ``(n, c)`` pairs."""
    values = [pass_at_k(n, c, k) for n, c in counts]
    if not values:
        raise ValueError("pass@k over no problems")
    return sum(values) / len(values)
