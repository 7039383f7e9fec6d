"""The arithmetic of PPO for language models, per token and in plain torch (no Lightning, no model).

Each function is one formula of the method, small enough to check by hand, which is how the tests
check them. Shapes are (B, T): B rollouts, T response tokens; ``mask`` is 1 on each row's response
tokens (one contiguous run; padding before or after it) and 0 elsewhere, and every mean below is
taken over the masked tokens only, so padding never moves a figure.

- ``kl_penalty``: the per-token KL estimate between the policy and the reference that PPO-RLHF
  subtracts from the reward (Ziegler et al. 2019; Stiennon et al. 2020; estimators after Schulman's
  "Approximating KL divergence", 2020).
- ``gae``: generalized advantage estimation (Schulman et al. 2016), returns = advantages + values.
- ``whiten``: advantages normalized over the batch's real tokens.
- ``policy_loss`` and ``value_loss``: PPO's clipped surrogate and clipped value loss (Schulman et
  al. 2017), with the clip fractions and the policy KL that training logs and stops on.
- ``entropy``: the mean entropy of the token distributions (the optional entropy bonus).
- ``FixedKLController`` / ``AdaptiveKLController``: the KL coefficient, fixed, or steered towards a
  target KL (Ziegler et al. 2019).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from llm_modules.registry import ConfigError

#: per-token KL estimators of KL(policy || reference) from samples of the policy
KL_ESTIMATORS = ("k1", "k2", "k3", "abs")


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over the entries where ``mask`` is 1 (0 when there are none)."""
    mask = mask.to(x.dtype)
    return (x * mask).sum() / mask.sum().clamp_min(1)


def masked_var(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Unbiased variance of ``x`` over the masked entries (n - 1 in the denominator; 0 for n <= 1)."""
    mask = mask.to(x.dtype)
    count = mask.sum()
    mean = (x * mask).sum() / count.clamp_min(1)
    return (((x - mean) * mask) ** 2).sum() / (count - 1).clamp_min(1)


def whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """``x`` scaled to unit variance over the masked entries, and (``shift_mean``) centred on 0.

    Whitened advantages make the size of a policy step independent of the reward's scale, which
    changes as the policy improves; half the tokens are then pushed up and half down. Padding
    entries come back as 0.
    """
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask.to(x.dtype)


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, kind: str = "k1") -> torch.Tensor:
    """Per-token estimate of KL(policy || reference) at the sampled tokens.

    ``logp`` and ``ref_logp`` are the log-probabilities the policy and the reference give the
    tokens the policy sampled. With ``r = ref_logp - logp``:

    - ``k1``: ``-r``, the log ratio: unbiased, and the usual RLHF penalty (it can be negative per token).
    - ``k2``: ``r**2 / 2``: biased, low variance, never negative.
    - ``k3``: ``exp(r) - 1 - r``: unbiased and never negative.
    - ``abs``: ``|r|``.
    """
    log_ratio = logp - ref_logp
    if kind == "k1":
        return log_ratio
    if kind == "k2":
        return 0.5 * log_ratio**2
    if kind == "k3":
        return torch.expm1(-log_ratio) + log_ratio
    if kind == "abs":
        return log_ratio.abs()
    raise ConfigError(f"KL estimator {kind!r} is not one of {', '.join(KL_ESTIMATORS)}")


@torch.no_grad()
def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimates and returns, per token (Schulman et al. 2016).

    ``rewards[t]`` is the reward after token t (the KL penalty, plus the score at the last token);
    ``values[t]`` the critic's estimate before it. With V = 0 after the last real token (the episode
    ends there): ``delta_t = r_t + gamma V_{t+1} - V_t`` and ``A_t = delta_t + gamma lam A_{t+1}``;
    returns are ``A_t + V_t``, the critic's targets. Padding entries come back as 0.
    """
    mask = mask.to(values.dtype)
    rewards, values = rewards.to(values.dtype) * mask, values * mask
    advantages = torch.zeros_like(values)
    running = torch.zeros_like(values[:, 0])
    length = values.shape[1]
    for t in reversed(range(length)):
        # 0 after the last real token: the episode ended, nothing follows (values are masked already)
        following = mask[:, t + 1] if t + 1 < length else torch.zeros_like(running)
        next_value = values[:, t + 1] if t + 1 < length else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = delta + gamma * lam * running * following
        advantages[:, t] = running * mask[:, t]
    return advantages, (advantages + values) * mask


class PolicyLoss(NamedTuple):
    loss: torch.Tensor           # the clipped surrogate, to minimize
    clip_fraction: torch.Tensor  # share of tokens where the clipped term was the one taken
    approx_kl: torch.Tensor      # KL(old || new) estimate (k3) over the tokens: how far the update went


def policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                clip: float = 0.2) -> PolicyLoss:
    """PPO's clipped surrogate (Schulman et al. 2017), as a loss.

    With ``ratio = exp(logp - old_logp)``, each token contributes ``max(-A ratio, -A clip(ratio,
    1 - clip, 1 + clip))``: the policy gains nothing from moving a token's probability beyond the
    clip range in the direction its advantage favours, which keeps each update near the policy that
    sampled the rollout. ``approx_kl`` is ``mean(ratio - 1 - log ratio)`` (never negative), the
    figure the update is stopped on (``target_kl``).
    """
    log_ratio = logp - old_logp
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip, 1.0 + clip)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        clip_fraction = masked_mean((clipped > unclipped).to(logp.dtype), mask)
        approx_kl = masked_mean(ratio - 1.0 - log_ratio, mask)
    return PolicyLoss(loss, clip_fraction, approx_kl)


class ValueLoss(NamedTuple):
    loss: torch.Tensor           # half the (clipped) squared error, to minimize
    clip_fraction: torch.Tensor  # share of tokens where the clipped error was the larger


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               clip: float | None = 0.2) -> ValueLoss:
    """The critic's loss: ``0.5 * max((V - R)^2, (V_clipped - R)^2)`` per token, where
    ``V_clipped = old + clip(V - old, -clip, clip)`` keeps the new estimate within ``clip`` of the one
    made at rollout time (the PPO2 recipe); ``clip=None``: plain squared error."""
    error = (values - returns) ** 2
    if clip is None:
        return ValueLoss(0.5 * masked_mean(error, mask), torch.zeros((), device=values.device))
    clipped_values = old_values + torch.clamp(values - old_values, -clip, clip)
    clipped_error = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(error, clipped_error), mask)
    with torch.no_grad():
        clip_fraction = masked_mean((clipped_error > error).to(values.dtype), mask)
    return ValueLoss(loss, clip_fraction)


def entropy(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean entropy (nats) of the token distributions ``softmax(logits)`` (B, T, V) over the masked
    positions: how random the policy still is; a bonus on it slows the collapse onto few tokens."""
    logp = F.log_softmax(logits.float(), dim=-1)
    per_token = -(logp.exp() * logp).sum(-1)
    return masked_mean(per_token, mask)


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log p(token) under ``softmax(logits)``: (B, T, V) and (B, T) ids -> (B, T), in float32."""
    return torch.gather(F.log_softmax(logits.float(), dim=-1), -1, tokens.unsqueeze(-1)).squeeze(-1)


# ---- the KL coefficient --------------------------------------------------------------------------------------


class FixedKLController:
    """A constant KL coefficient."""

    def __init__(self, coef: float):
        self.value = float(coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        """Nothing changes (the adaptive controller's interface)."""


class AdaptiveKLController:
    """The KL coefficient steered so the KL to the reference approaches ``target`` (Ziegler et al. 2019).

    After each rollout batch: ``e = clip(KL / target - 1, -0.2, 0.2)`` and ``coef *= 1 + e n / horizon``,
    where ``n`` is the number of rollouts just used: proportional control whose error is clipped, so
    one odd batch moves the coefficient by at most ``0.2 n / horizon``.
    """

    def __init__(self, coef: float, target: float, horizon: int):
        if target <= 0 or horizon <= 0:
            raise ConfigError(f"adaptive KL control needs target > 0 and horizon > 0; got target={target}, "
                              f"horizon={horizon}")
        self.value, self.target, self.horizon = float(coef), float(target), int(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon
