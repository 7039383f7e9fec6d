"""Scaling laws: compute-optimal model and data size for a FLOP budget, and the loss they predict.

Chinchilla (Hoffmann et al., 2022, "Training Compute-Optimal Large Language Models"):

- the rule the paper is known for: train on about 20 tokens per parameter, so with C = 6ND the
  optimum for a budget C is N = sqrt(C / 120), D = 20 N (their Chinchilla: 70B parameters,
  1.4T tokens, for Gopher's 5.76e23 FLOPs);
- the parametric fit of approach 3 (their eq. 10 and section 3.3):
  L(N, D) = E + A / N^alpha + B / D^beta with E = 1.69, A = 406.4, B = 410.7, alpha = 0.34,
  beta = 0.28, whose minimum under C = 6ND is N = G (C/6)^(beta/(alpha+beta)),
  D = G^-1 (C/6)^(alpha/(alpha+beta)), G = (alpha A / (beta B))^(1/(alpha+beta)). Approach 3
  favours smaller models than approaches 1 and 2 (and the 20-tokens rule). N counts all parameters.

Kaplan et al. (2020, "Scaling Laws for Neural Language Models"), with N the non-embedding
parameters and losses in nats per token on WebText2 with GPT-2's tokenizer:

- L(N) = (N_c / N)^alpha_N, alpha_N = 0.076, N_c = 8.8e13 (eq. 1.1);
- L(D) = (D_c / D)^alpha_D, alpha_D = 0.095, D_c = 5.4e13 tokens (eq. 1.2);
- L(N, D) = [(N_c / N)^(alpha_N / alpha_D) + D_c / D]^alpha_D (eq. 1.5);
- compute-optimal size N = 1.3e9 x C^0.73, C in PF-days (section 6.1, figure 14).

Each law predicts the loss on the data and tokenizer it was fitted to (MassiveText for Chinchilla):
useful for comparing plans with each other, not as a forecast of the loss on another corpus.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

PF_DAY = 1e15 * 86400  # FLOPs in a petaflop/s-day

CHINCHILLA_TOKENS_PER_PARAMETER = 20.0
CHINCHILLA_E, CHINCHILLA_A, CHINCHILLA_B = 1.69, 406.4, 410.7
CHINCHILLA_ALPHA, CHINCHILLA_BETA = 0.34, 0.28

KAPLAN_ALPHA_N, KAPLAN_N_C = 0.076, 8.8e13
KAPLAN_ALPHA_D, KAPLAN_D_C = 0.095, 5.4e13
KAPLAN_N_OPT, KAPLAN_N_OPT_EXPONENT = 1.3e9, 0.73


def _positive(name: str, value: float) -> float:
    if not value > 0:
        raise ValueError(f"{name} must be positive; got {value!r}")
    return float(value)


@dataclass(frozen=True)
class Allocation:
    """Parameters and tokens for a budget of ``flops`` (= 6 x parameters x tokens)."""

    parameters: float
    tokens: float
    flops: float


def chinchilla_optimal(flops: float, tokens_per_parameter: float = CHINCHILLA_TOKENS_PER_PARAMETER) -> Allocation:
    """The 20-tokens-per-parameter rule: N = sqrt(C / (6 x 20)), D = 20 N."""
    c = _positive("flop budget", flops)
    n = math.sqrt(c / (6 * tokens_per_parameter))
    return Allocation(n, tokens_per_parameter * n, c)


def chinchilla_fit_optimal(flops: float) -> Allocation:
    """The minimum of approach 3's fitted loss under C = 6ND."""
    c = _positive("flop budget", flops)
    a, b = CHINCHILLA_ALPHA, CHINCHILLA_BETA
    g = (a * CHINCHILLA_A / (b * CHINCHILLA_B)) ** (1 / (a + b))
    n = g * (c / 6) ** (b / (a + b))
    return Allocation(n, (c / 6) / n, c)


def chinchilla_loss(parameters: float, tokens: float) -> float:
    """Approach 3's L(N, D) = E + A / N^alpha + B / D^beta (N: all parameters)."""
    n, d = _positive("parameters", parameters), _positive("tokens", tokens)
    return CHINCHILLA_E + CHINCHILLA_A / n**CHINCHILLA_ALPHA + CHINCHILLA_B / d**CHINCHILLA_BETA


def kaplan_loss(non_embedding_parameters: float, tokens: float | None = None) -> float:
    """Kaplan's L(N) (data unlimited) or, with ``tokens``, L(N, D)."""
    n = _positive("non-embedding parameters", non_embedding_parameters)
    if tokens is None:
        return (KAPLAN_N_C / n) ** KAPLAN_ALPHA_N
    d = _positive("tokens", tokens)
    return ((KAPLAN_N_C / n) ** (KAPLAN_ALPHA_N / KAPLAN_ALPHA_D) + KAPLAN_D_C / d) ** KAPLAN_ALPHA_D


def kaplan_data_loss(tokens: float) -> float:
    """Kaplan's L(D): a large model trained on ``tokens`` tokens with early stopping."""
    return (KAPLAN_D_C / _positive("tokens", tokens)) ** KAPLAN_ALPHA_D


def kaplan_optimal(flops: float) -> Allocation:
    """Kaplan's compute-optimal (non-embedding) size N = 1.3e9 x C^0.73 (C in PF-days), D = C / 6N."""
    c = _positive("flop budget", flops)
    n = KAPLAN_N_OPT * (c / PF_DAY) ** KAPLAN_N_OPT_EXPONENT
    return Allocation(n, c / (6 * n), c)
