"""PPO's arithmetic (``llm_modules.alignment.rl``) against values worked out by hand, and the pieces
around it that need no model: the KL controllers, PPOConfig's refusals, the reward sources and the
toy rewards, and where a sampled response ends."""

from __future__ import annotations

import math

import pytest
import torch

from llm_modules.alignment.ppo_config import PPOConfig, as_ppo_config
from llm_modules.alignment.reward_source import FunctionReward, as_rewards, reward_spec
from llm_modules.alignment.rl import (
    AdaptiveKLController,
    FixedKLController,
    entropy,
    gae,
    kl_penalty,
    masked_mean,
    policy_loss,
    token_logprobs,
    value_loss,
    whiten,
)
from llm_modules.alignment.rollout import response_mask
from llm_modules.alignment.toy_rewards import token_share, word_share
from llm_modules.registry import ConfigError


def t(*rows):
    return torch.tensor(rows, dtype=torch.float64)


# ---- GAE ----------------------------------------------------------------------------------------------------


def test_gae_matches_the_recursion_by_hand_and_ignores_padding():
    """gamma 0.9, lambda 0.8; row 0: three tokens, the score 1 at the last; row 1: two tokens then two
    padding entries holding nonsense that must not leak in.

    Row 0 by hand (V = 0 after the last token):
      delta2 = 1 - 0.3 = 0.7                      A2 = 0.7
      delta1 = 0 + 0.9 * 0.3 - 0.4 = -0.13        A1 = -0.13 + 0.72 * 0.7 = 0.374
      delta0 = 0 + 0.9 * 0.4 - 0.5 = -0.14        A0 = -0.14 + 0.72 * 0.374 = 0.12928
    Row 1: delta1 = 1 - 0.4 = 0.6, A1 = 0.6; delta0 = 0.9 * 0.4 - 0.5 = -0.14, A0 = -0.14 + 0.72 * 0.6 = 0.292.
    """
    rewards = t([0.0, 0.0, 1.0, 0.0], [0.0, 1.0, 5.0, 7.0])
    values = t([0.5, 0.4, 0.3, 0.0], [0.5, 0.4, 9.0, 9.0])
    mask = t([1, 1, 1, 0], [1, 1, 0, 0])
    advantages, returns = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    assert torch.allclose(advantages, t([0.12928, 0.374, 0.7, 0.0], [0.292, 0.6, 0.0, 0.0]))
    assert torch.allclose(returns, t([0.62928, 0.774, 1.0, 0.0], [0.792, 1.0, 0.0, 0.0]))


def test_gae_with_gamma_and_lambda_one_is_the_reward_to_go_minus_the_value():
    rewards, values, mask = t([0.1, -0.2, 1.0]), t([0.3, 0.2, 0.1]), t([1, 1, 1])
    advantages, returns = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    assert torch.allclose(returns, t([0.9, 0.8, 1.0]))
    assert torch.allclose(advantages, returns - values)


def test_gae_reads_a_response_after_left_padding():
    """A leading masked entry (a prompt position) neither receives nor passes on an advantage."""
    advantages, _ = gae(t([3.0, 0.0, 1.0]), t([4.0, 0.5, 0.3]), t([0, 1, 1]), gamma=0.9, lam=0.8)
    expected, _ = gae(t([0.0, 1.0]), t([0.5, 0.3]), t([1, 1]), gamma=0.9, lam=0.8)
    assert advantages[0, 0] == 0 and torch.allclose(advantages[:, 1:], expected)


def test_whiten_uses_the_masked_entries_only():
    """mean 2 and unbiased variance 1 over [1, 2, 3]; the padding (100) takes no part and comes back 0."""
    x, mask = t([1.0, 2.0, 3.0, 100.0]), t([1, 1, 1, 0])
    assert torch.allclose(whiten(x, mask), t([-1.0, 0.0, 1.0, 0.0]), atol=1e-6)
    assert torch.allclose(whiten(x, mask, shift_mean=False), t([1.0, 2.0, 3.0, 0.0]), atol=1e-6)
    assert masked_mean(x, mask) == 2.0 and masked_mean(x, torch.zeros_like(mask)) == 0.0


# ---- the KL penalty ---------------------------------------------------------------------------------------------


def test_kl_penalty_estimators():
    """logp = [-1, -2], ref = [-1.5, -1]: log ratios [0.5, -1]; with r = ref - logp = [-0.5, 1]:
    k3 = exp(r) - 1 - r = [e^-0.5 - 0.5, e - 2]."""
    logp, ref = t([-1.0, -2.0]), t([-1.5, -1.0])
    assert torch.allclose(kl_penalty(logp, ref, "k1"), t([0.5, -1.0]))
    assert torch.allclose(kl_penalty(logp, ref, "k2"), t([0.125, 0.5]))
    assert torch.allclose(kl_penalty(logp, ref, "abs"), t([0.5, 1.0]))
    assert torch.allclose(kl_penalty(logp, ref, "k3"), t([math.exp(-0.5) - 0.5, math.e - 2.0]))
    with pytest.raises(ConfigError, match="'k4' is not one of k1, k2, k3, abs"):
        kl_penalty(logp, ref, "k4")


def test_k1_and_k3_estimate_the_kl_of_the_sampling_policy():
    """Averaged over samples from p, both estimate KL(p || q) (k3 with lower variance)."""
    p, q = torch.tensor([0.7, 0.2, 0.1]), torch.tensor([0.4, 0.4, 0.2])
    exact = float((p * (p / q).log()).sum())
    samples = torch.multinomial(p, 200_000, replacement=True, generator=torch.Generator().manual_seed(0))
    logp, logq = p.log()[samples], q.log()[samples]
    for kind in ("k1", "k3"):
        assert float(kl_penalty(logp, logq, kind).mean()) == pytest.approx(exact, abs=3e-3)


# ---- the clipped losses -------------------------------------------------------------------------------------------


def test_policy_loss_clips_by_hand():
    """clip 0.2; ratios [1.5, 0.5, 0.5, 1.0], advantages [1, 1, -1, -2], a fifth token masked out.
    Per token max(-A r, -A clip(r)): [max(-1.5, -1.2), max(-0.5, -0.8), max(0.5, 0.8), max(2, 2)]
    = [-1.2, -0.5, 0.8, 2.0] -> loss 1.1 / 4 = 0.275; the clipped term won at tokens 0 and 2 -> 0.5.
    Policy KL: mean(r - 1 - log r) = (0.0945349 + 0.1931472 + 0.1931472 + 0) / 4."""
    ratio = t([1.5, 0.5, 0.5, 1.0, 3.0])
    old = t([-1.0, -2.0, -0.5, -1.2, -3.0])
    advantages = t([1.0, 1.0, -1.0, -2.0, 10.0])
    mask = t([1, 1, 1, 1, 0])
    out = policy_loss(old + ratio.log(), old, advantages, mask, clip=0.2)
    assert out.loss.item() == pytest.approx(0.275)
    assert out.clip_fraction.item() == pytest.approx(0.5)
    kl = (0.5 - math.log(1.5)) + 2 * (-0.5 + math.log(2.0))
    assert out.approx_kl.item() == pytest.approx(kl / 4)


def test_policy_loss_at_ratio_one_is_minus_the_mean_advantage_and_its_gradient_the_policy_gradient():
    logp = torch.tensor([[-1.0, -2.0, -0.5]], requires_grad=True)
    advantages, mask = torch.tensor([[1.0, -2.0, 0.5]]), torch.ones(1, 3)
    out = policy_loss(logp, logp.detach(), advantages, mask, clip=0.2)
    assert out.loss.item() == pytest.approx(0.5 / 3) and out.clip_fraction == 0 and out.approx_kl == 0
    out.loss.backward()
    assert torch.allclose(logp.grad, -advantages / 3)


def test_value_loss_clips_by_hand():
    """clip 0.2; values [1, 0, 2], at rollout [0.5, 0.5, 2], returns [2, 0.2, 1]:
    token 0: clipped value 0.7, errors 1 vs 1.69 -> 1.69 (the clipped one, counted);
    token 1: clipped value 0.3, errors 0.04 vs 0.01 -> 0.04; token 2: 1 either way.
    loss = 0.5 * (1.69 + 0.04 + 1) / 3 = 0.455, clip fraction 1/3; unclipped: 0.5 * 2.04 / 3 = 0.34."""
    values, old, returns = t([1.0, 0.0, 2.0, 5.0]), t([0.5, 0.5, 2.0, 0.0]), t([2.0, 0.2, 1.0, -5.0])
    mask = t([1, 1, 1, 0])
    out = value_loss(values, old, returns, mask, clip=0.2)
    assert out.loss.item() == pytest.approx(0.455) and out.clip_fraction.item() == pytest.approx(1 / 3)
    assert value_loss(values, old, returns, mask, clip=None).loss.item() == pytest.approx(0.34)


def test_entropy_and_token_logprobs():
    """Uniform over 4 tokens: ln 4 nats; a near one-hot row: ~0; the masked row takes no part."""
    logits = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [50.0, 0.0, 0.0, 0.0], [1.0, 2.0, 3.0, 4.0]]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    assert entropy(logits, mask).item() == pytest.approx(math.log(4) / 2, abs=1e-6)
    picked = token_logprobs(logits, torch.tensor([[2, 0, 3]]))
    assert torch.allclose(picked, torch.tensor([[-math.log(4), 0.0, 4 - math.log(sum(math.exp(k) for k in (1, 2, 3, 4)))]]))


# ---- the KL coefficient ---------------------------------------------------------------------------------------


def test_adaptive_kl_controller_follows_ziegler_et_al():
    """target 6, horizon 100, 10 rollouts per update:
    KL 9   -> error clip(0.5, +-0.2) = 0.2  -> coef 0.1 * (1 + 0.2 * 10 / 100) = 0.102;
    KL 5.4 -> error -0.1                   -> coef 0.102 * (1 - 0.1 * 10 / 100) = 0.10098."""
    controller = AdaptiveKLController(0.1, target=6.0, horizon=100)
    controller.update(9.0, 10)
    assert controller.value == pytest.approx(0.102)
    controller.update(5.4, 10)
    assert controller.value == pytest.approx(0.10098)
    fixed = FixedKLController(0.1)
    fixed.update(100.0, 10)
    assert fixed.value == 0.1
    with pytest.raises(ConfigError, match="target > 0"):
        AdaptiveKLController(0.1, target=0.0, horizon=100)


# ---- options and rewards -----------------------------------------------------------------------------------------


def test_ppo_config_refuses_bad_values_naming_the_field():
    assert as_ppo_config(None) == PPOConfig()
    assert as_ppo_config({"kl": {"coef": 0.2, "adaptive": True}}).kl.adaptive
    cases = [
        ({"ppo_epochs": 0}, "model.ppo.ppo_epochs must be an integer >= 1"),
        ({"clip_range": 0}, "model.ppo.clip_range must be a number > 0"),
        ({"lam": 1.5}, "model.ppo.lam must be a number >= 0.0 and <= 1.0"),
        ({"critic": "twin"}, "model.ppo.critic='twin' is not one of shared, separate"),
        ({"kl": {"estimator": "k5"}}, "model.ppo.kl.estimator='k5'"),
        ({"kl": {"coef": 0.0, "adaptive": True}}, "cannot grow"),
        ({"kl": {"coeff": 0.1}}, r"model.ppo.kl: unknown option\(s\) \['coeff'\]"),
        ({"epochs": 2}, r"model.ppo: unknown option\(s\) \['epochs'\]"),
        ({"target_kl": -1.0}, "model.ppo.target_kl must be a number > 0.0"),
    ]
    for options, message in cases:
        with pytest.raises(ConfigError, match=message):
            as_ppo_config(options)


def test_reward_spec_checks_import_paths_now():
    assert reward_spec("runs/rm/last.ckpt") == "runs/rm/last.ckpt"  # a file: checked when training starts
    assert reward_spec(token_share) == "llm_modules.alignment.toy_rewards:token_share"
    assert reward_spec({"name": word_share, "word": "cat"}) == {
        "name": "llm_modules.alignment.toy_rewards:word_share", "word": "cat"}
    with pytest.raises(ConfigError, match="model.reward: cannot import module 'no_such_pkg.rewards'"):
        reward_spec("no_such_pkg.rewards:fn")
    with pytest.raises(ConfigError, match="has no 'missing'"):
        reward_spec("llm_modules.alignment.toy_rewards:missing")
    with pytest.raises(ConfigError, match="cannot be named by an import path"):
        reward_spec(lambda **_: [1.0])
    with pytest.raises(ConfigError, match="model.reward is required"):
        reward_spec(None)
    with pytest.raises(ConfigError, match="names a function as name"):
        reward_spec({"word": "cat"})


def test_reward_values_are_checked():
    assert as_rewards([1, 2.5], 2, "fn", torch.device("cpu")).tolist() == [1.0, 2.5]
    with pytest.raises(ConfigError, match="returned 3 rewards for 2 rollouts"):
        as_rewards([1, 2, 3], 2, "fn", torch.device("cpu"))
    with pytest.raises(ConfigError, match="non-finite reward"):
        as_rewards([1, float("nan")], 2, "fn", torch.device("cpu"))
    with pytest.raises(ConfigError, match="not one number per rollout"):
        as_rewards(["a", "b"], 2, "fn", torch.device("cpu"))


def test_toy_rewards():
    assert token_share(response_ids=[[5, 1, 5, 2], [], [7]], token_id=5) == [0.5, 0.0, 0.0]
    assert token_share(response_ids=[[5, 7]], token_id=[5, 7]) == [1.0]
    assert word_share(responses=["The cat, the CAT and a dog.", ""], word="cat") == [pytest.approx(2 / 7), 0.0]
    with pytest.raises(ConfigError, match="no tokenizer"):
        word_share(responses=None, word="cat")


def test_a_response_ends_with_its_first_stop_token_and_rewards_see_it_without():
    tokens = torch.tensor([[5, 3, 0, 0], [5, 6, 7, 8], [3, 0, 0, 0]])
    mask = response_mask(tokens, (3,))
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    assert response_mask(tokens, ()).sum() == 12

    from llm_modules.alignment.rollout import Samples

    prompts = torch.tensor([[0, 9], [8, 9], [8, 9]])
    samples = Samples(torch.cat([prompts, tokens], 1), torch.cat([torch.tensor([[0, 1], [1, 1], [1, 1]]),
                                                                   mask.long()], 1), 2, mask, (3,))
    assert samples.prompt_id_lists() == [[9], [8, 9], [8, 9]]
    assert samples.response_id_lists() == [[5], [5, 6, 7, 8], []]
    rewards = FunctionReward({"name": "llm_modules.alignment.toy_rewards:token_share", "token_id": 5})
    assert rewards(samples, tokenizer=None).tolist() == [1.0, 0.25, 0.0]
