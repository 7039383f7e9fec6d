"""The preference losses of alignment, as plain torch functions over per-sequence numbers.

Kept apart from the LightningModules so that each formula can be checked against values worked
out by hand, and reused (PPO's reward model is trained with ``pairwise_reward_loss``).

- ``sequence_logprobs``: log p(response | prompt) of each row, the sum over the response tokens
  that the batch labels (prompt and padding carry the ignore index).
- ``pairwise_reward_loss``: the Bradley-Terry loss of a reward model, ``-log sigmoid(r_chosen -
  r_rejected - margin)`` (Ouyang et al., 2022; the margin as in Llama 2, Touvron et al., 2023:
  a pair rated "much better" must be separated by more).
- ``dpo_loss``: Direct Preference Optimization (Rafailov et al., 2023) from the policy's and the
  reference's sequence log-probabilities, with conservative label smoothing (cDPO: the labels are
  taken to be flipped with probability ``label_smoothing``) or the IPO loss (Azar et al., 2023),
  which regresses the log-ratio gap to ``1 / (2 beta)`` instead of pushing it without bound. The gap
  is of summed sequence log-probabilities, as in the paper; TRL averages per token for IPO (see
  ``dpo_loss`` for how the two ``beta`` relate).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from llm_modules.registry import ConfigError

IGNORE_INDEX = -100
LOSS_TYPES = ("sigmoid", "ipo")


def sequence_logprobs(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """(B,) sum of ``log softmax(logits)[t, labels[t]]`` over the positions whose label is not
    ``ignore_index``; ``labels`` are aligned with the logits (position t predicts ``labels[t]``,
    as the data modules lay them out). Computed in float32: the sum of a few hundred bf16 terms
    would lose the small differences DPO trains on."""
    logits = logits.float()
    scored = labels != ignore_index
    picked = logits.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    token_logprobs = picked - logits.logsumexp(-1)
    return (token_logprobs * scored).sum(-1)


def pairwise_reward_loss(
    r_chosen: torch.Tensor, r_rejected: torch.Tensor, margin: torch.Tensor | float | None = None
) -> torch.Tensor:
    """Mean over pairs of ``-log sigmoid(r_chosen - r_rejected - margin)`` (margin: per pair or one
    number; None: 0). ``logsigmoid`` keeps it finite for large gaps either way."""
    gap = r_chosen.float() - r_rejected.float()
    if margin is not None:
        gap = gap - (margin.float() if isinstance(margin, torch.Tensor) else float(margin))
    return -F.logsigmoid(gap).mean()


class DPOLoss(NamedTuple):
    """The mean loss and, per pair, the implicit rewards ``beta * (log pi - log pi_ref)`` of the
    chosen and rejected responses (detached: they are figures to log, not to train on)."""

    loss: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor


def check_dpo_options(beta: float, loss_type: str, label_smoothing: float, prefix: str = "model") -> None:
    """Refuse options the loss cannot use, naming the config field."""
    if not beta > 0:
        raise ConfigError(f"{prefix}.beta={beta!r} must be positive (0.1 is the usual start: larger stays closer "
                          "to the reference)")
    if loss_type not in LOSS_TYPES:
        raise ConfigError(f"{prefix}.loss_type={loss_type!r} is not one of {', '.join(LOSS_TYPES)}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ConfigError(f"{prefix}.label_smoothing={label_smoothing!r} must be in [0, 0.5): the share of pairs "
                          "whose labels are taken to be flipped")
    if loss_type == "ipo" and label_smoothing:
        raise ConfigError(f"{prefix}.label_smoothing applies to loss_type sigmoid; IPO already regularizes "
                          "towards a finite gap, set label_smoothing: 0")


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
) -> DPOLoss:
    """DPO from sequence log-probabilities (B,) of the policy and the frozen reference.

    With ``h = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)``:

    - ``sigmoid``: ``-(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h)`` (eps: label_smoothing);
    - ``ipo``: ``(h - 1 / (2 beta))^2``, averaged over the pairs.

    IPO's sum-vs-mean convention: ``h`` is built from *summed* sequence log-probabilities (what
    :func:`sequence_logprobs` returns), as in the paper (Azar et al., 2023, eq. 17 and Algorithm 1:
    ``log pi(y|x)`` of the whole response, ``tau`` there is ``beta`` here), so ``1 / (2 beta)`` is the
    target gap in nats of the *whole* response. TRL's ``DPOTrainer(loss_type="ipo")`` instead divides
    each sequence log-probability by the response's token count first (a per-token mean), so its
    target is a gap per token. For responses of about ``L`` tokens the two agree when
    ``beta_here = beta_trl / L``; the same ``beta`` (e.g. 0.1) asks here for an L times smaller gap
    per token than in TRL, and the loss (and its gradient) is about ``L^2`` times larger in scale.
    """
    check_dpo_options(beta, loss_type, label_smoothing)
    chosen_ratio = policy_chosen.float() - ref_chosen.float()
    rejected_ratio = policy_rejected.float() - ref_rejected.float()
    h = chosen_ratio - rejected_ratio
    if loss_type == "sigmoid":
        losses = -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    else:
        losses = (h - 1 / (2 * beta)) ** 2
    return DPOLoss(losses.mean(), beta * chosen_ratio.detach(), beta * rejected_ratio.detach())
