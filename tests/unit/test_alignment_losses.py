"""alignment.losses against values worked out by hand (math, not torch, on the expected side)."""

from __future__ import annotations

import math

import pytest
import torch

from llm_modules.alignment.losses import (
    dpo_loss,
    pairwise_reward_loss,
    sequence_logprobs,
)
from llm_modules.registry import ConfigError


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


def test_sequence_logprobs_sums_the_labelled_tokens_only():
    # One row, vocabulary of 3, three positions; only positions 1 and 2 are labelled.
    logits = torch.tensor([[[0.0, 0.0, 0.0], [1.0, 2.0, 3.0], [0.0, math.log(3.0), 0.0]]])
    labels = torch.tensor([[-100, 2, 1]])
    # position 1: log(e^3 / (e + e^2 + e^3)); position 2: log(3 / (1 + 3 + 1))
    expected = (3 - math.log(math.e + math.e**2 + math.e**3)) + math.log(3 / 5)
    assert sequence_logprobs(logits, labels).item() == pytest.approx(expected, abs=1e-6)
    assert sequence_logprobs(logits, torch.full_like(labels, -100)).item() == 0.0


def test_sequence_logprobs_in_float32_from_bfloat16():
    logits = torch.randn(2, 5, 11).bfloat16()
    labels = torch.randint(0, 11, (2, 5))
    expected = torch.log_softmax(logits.float(), -1).gather(-1, labels.unsqueeze(-1)).squeeze(-1).sum(-1)
    got = sequence_logprobs(logits, labels)
    assert got.dtype == torch.float32 and torch.allclose(got, expected, atol=1e-5)


def test_pairwise_reward_loss_with_and_without_margin():
    chosen, rejected = torch.tensor([2.0, 0.5]), torch.tensor([1.0, 1.5])
    plain = -(log_sigmoid(1.0) + log_sigmoid(-1.0)) / 2
    assert pairwise_reward_loss(chosen, rejected).item() == pytest.approx(plain, abs=1e-6)
    margin = torch.tensor([0.5, 2.0])
    with_margin = -(log_sigmoid(1.0 - 0.5) + log_sigmoid(-1.0 - 2.0)) / 2
    assert pairwise_reward_loss(chosen, rejected, margin).item() == pytest.approx(with_margin, abs=1e-6)
    assert pairwise_reward_loss(chosen, rejected, 1.0).item() == pytest.approx(
        -(log_sigmoid(0.0) + log_sigmoid(-2.0)) / 2, abs=1e-6)
    # far apart: finite, and near 0 / near the gap
    assert pairwise_reward_loss(torch.tensor([100.0]), torch.tensor([0.0])).item() == pytest.approx(0.0, abs=1e-6)
    assert pairwise_reward_loss(torch.tensor([0.0]), torch.tensor([100.0])).item() == pytest.approx(100.0, rel=1e-6)


# policy chosen/rejected, reference chosen/rejected for two pairs
PC, PR, RC, RR = torch.tensor([-5.0, -8.0]), torch.tensor([-7.0, -6.0]), torch.tensor([-6.0, -7.0]), torch.tensor([-6.5, -6.5])


def test_dpo_sigmoid_loss_and_implicit_rewards():
    beta = 0.5
    # h = (pc - rc) - (pr - rr): pair 0: 1 - (-0.5) = 1.5; pair 1: -1 - 0.5 = -1.5
    expected = -(log_sigmoid(0.75) + log_sigmoid(-0.75)) / 2
    out = dpo_loss(PC, PR, RC, RR, beta)
    assert out.loss.item() == pytest.approx(expected, abs=1e-6)
    assert out.chosen_rewards.tolist() == pytest.approx([0.5, -0.5])
    assert out.rejected_rewards.tolist() == pytest.approx([-0.25, 0.25])


def test_dpo_label_smoothing():
    beta, eps = 0.5, 0.1
    per_pair = [-(1 - eps) * log_sigmoid(beta * h) - eps * log_sigmoid(-beta * h) for h in (1.5, -1.5)]
    out = dpo_loss(PC, PR, RC, RR, beta, label_smoothing=eps)
    assert out.loss.item() == pytest.approx(sum(per_pair) / 2, abs=1e-6)


def test_ipo_loss():
    beta = 0.25  # target gap 1 / (2 beta) = 2
    expected = ((1.5 - 2) ** 2 + (-1.5 - 2) ** 2) / 2
    assert dpo_loss(PC, PR, RC, RR, beta, loss_type="ipo").loss.item() == pytest.approx(expected, abs=1e-6)


def test_dpo_gradient_raises_chosen_and_lowers_rejected():
    chosen, rejected = PC.clone().requires_grad_(), PR.clone().requires_grad_()
    dpo_loss(chosen, rejected, RC, RR, 0.1).loss.backward()
    assert (chosen.grad < 0).all() and (rejected.grad > 0).all()  # descent raises chosen, lowers rejected


@pytest.mark.parametrize(
    "options, field",
    [({"beta": 0.0}, "beta"), ({"loss_type": "hinge"}, "loss_type"), ({"label_smoothing": 0.5}, "label_smoothing"),
     ({"loss_type": "ipo", "label_smoothing": 0.1}, "label_smoothing")],
)
def test_bad_options_name_the_field(options, field):
    kwargs = {"beta": 0.1, **options}
    with pytest.raises(ConfigError, match=f"model.{field}"):
        dpo_loss(PC, PR, RC, RR, **kwargs)
