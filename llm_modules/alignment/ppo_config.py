"""PPOConfig: how PPO samples, scores and updates, as plain data (``model.ppo`` in YAML).

Defaults follow the RLHF recipe of Ziegler et al. (2019) and Stiennon et al. (2020) as packaged by
TRL: four PPO epochs per rollout batch, clip 0.2 for the policy and the value, gamma 1 (an episode
is one response, rewarded once at its end) and lambda 0.95, whitened advantages, a per-token KL
penalty against the reference policy. Every field is checked when the config is built, and a bad
value is refused with the field's full name (``model.ppo....``) and what to give instead.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from llm_modules.alignment.rl import KL_ESTIMATORS
from llm_modules.registry import ConfigError

CRITICS = ("shared", "separate")
FIELD = "model.ppo"


@dataclass
class KLConfig:
    """The KL penalty against the reference, subtracted from the reward at every response token.

    ``coef``: the penalty's weight (the start value when ``adaptive``). ``adaptive``: steer the
    weight so the KL per response approaches ``target`` nats, with the controller's ``horizon`` in
    rollouts (Ziegler et al. 2019); otherwise the weight stays ``coef``. ``estimator``: the per-token
    estimate (``rl.kl_penalty``: k1 = the log ratio, the usual choice; k2, k3, abs).
    """

    coef: float = 0.1
    adaptive: bool = False
    target: float = 6.0
    horizon: int = 10000
    estimator: str = "k1"

    def __post_init__(self) -> None:
        _number(f"{FIELD}.kl.coef", self.coef, minimum=0.0)
        _flag(f"{FIELD}.kl.adaptive", self.adaptive)
        _number(f"{FIELD}.kl.target", self.target, minimum=0.0, strict=True)
        _integer(f"{FIELD}.kl.horizon", self.horizon, minimum=1)
        if self.estimator not in KL_ESTIMATORS:
            raise ConfigError(f"{FIELD}.kl.estimator={self.estimator!r} is not one of {', '.join(KL_ESTIMATORS)}; "
                              "k1 (the log ratio) is the usual penalty")
        if self.adaptive and self.coef == 0:
            raise ConfigError(f"{FIELD}.kl.coef=0 with adaptive: true cannot grow (it is scaled); give a start "
                              "value such as 0.1")


@dataclass
class PPOConfig:
    """PPO's options; the prompt batch (the data module's ``batch_size``) is the rollout batch.

    Sampling (each rollout batch, through ``llm_modules.generation.generate``): ``max_new_tokens``,
    ``temperature``, ``top_k``, ``top_p``; ``seed`` seeds the sampling of step N with ``seed + N``
    (per process), so a run and its resumption sample the same responses. Log-probabilities are
    those of the tempered distribution that was sampled (``logits / temperature``); ``top_k`` and
    ``top_p`` truncate what is sampled but not the probabilities, as in TRL, so keep them off unless
    you need them.

    Update: ``ppo_epochs`` passes over the rollout batch in shuffled minibatches of
    ``minibatch_size`` rollouts (null: the whole batch), one optimizer step each. ``target_kl``
    (null: off) stops the update early when a minibatch's policy KL to the rollout policy passes
    ``1.5 * target_kl`` (before stepping on it). ``clip_range`` clips the policy ratio,
    ``value_clip_range`` the value change (null: no clipping); ``vf_coef`` weights the value loss,
    ``entropy_coef`` the entropy bonus. ``gamma`` and ``lam`` are GAE's; ``whiten_advantages``
    normalizes advantages over the batch's tokens. ``max_grad_norm`` clips the gradient norm of each
    step (null: the trainer's ``gradient_clip_val``, 1.0 with the CLI's defaults; 0: no clipping).

    Critic: ``shared`` puts the value head on the policy's own last hidden states (one forward
    serves both; policy and value losses shape one backbone); ``separate`` gives the value head a
    copy of the initial backbone of its own (twice the trainable weights, no interference).
    """

    max_new_tokens: int = 32
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int = 0
    ppo_epochs: int = 4
    minibatch_size: int | None = None
    gamma: float = 1.0
    lam: float = 0.95
    clip_range: float = 0.2
    value_clip_range: float | None = 0.2
    vf_coef: float = 0.1
    entropy_coef: float = 0.0
    kl: KLConfig = field(default_factory=KLConfig)
    target_kl: float | None = None
    whiten_advantages: bool = True
    critic: str = "shared"
    max_grad_norm: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.kl, dict):
            self.kl = KLConfig(**_known(KLConfig, self.kl, f"{FIELD}.kl"))
        elif not isinstance(self.kl, KLConfig):
            raise ConfigError(f"{FIELD}.kl must be a mapping such as {{coef: 0.1, adaptive: false}}; got {self.kl!r}")
        _integer(f"{FIELD}.max_new_tokens", self.max_new_tokens, minimum=1)
        _number(f"{FIELD}.temperature", self.temperature, minimum=0.0, strict=True)
        if self.top_k is not None:
            _integer(f"{FIELD}.top_k", self.top_k, minimum=1, hint="or null for no top-k filtering")
        if self.top_p is not None:
            _number(f"{FIELD}.top_p", self.top_p, minimum=0.0, strict=True, maximum=1.0)
        _integer(f"{FIELD}.seed", self.seed, minimum=0)
        _integer(f"{FIELD}.ppo_epochs", self.ppo_epochs, minimum=1)
        if self.minibatch_size is not None:
            _integer(f"{FIELD}.minibatch_size", self.minibatch_size, minimum=1, hint="or null for the whole batch")
        _number(f"{FIELD}.gamma", self.gamma, minimum=0.0, maximum=1.0)
        _number(f"{FIELD}.lam", self.lam, minimum=0.0, maximum=1.0)
        _number(f"{FIELD}.clip_range", self.clip_range, minimum=0.0, strict=True)
        if self.value_clip_range is not None:
            _number(f"{FIELD}.value_clip_range", self.value_clip_range, minimum=0.0, strict=True,
                    hint="or null for an unclipped value loss")
        _number(f"{FIELD}.vf_coef", self.vf_coef, minimum=0.0)
        _number(f"{FIELD}.entropy_coef", self.entropy_coef, minimum=0.0)
        if self.target_kl is not None:
            _number(f"{FIELD}.target_kl", self.target_kl, minimum=0.0, strict=True, hint="or null: no early stop")
        _flag(f"{FIELD}.whiten_advantages", self.whiten_advantages)
        if self.critic not in CRITICS:
            raise ConfigError(f"{FIELD}.critic={self.critic!r} is not one of {', '.join(CRITICS)} (shared: a value "
                              "head on the policy's backbone; separate: on a copy of it)")
        if self.max_grad_norm is not None:
            _number(f"{FIELD}.max_grad_norm", self.max_grad_norm, minimum=0.0,
                    hint="0 for no clipping, null for the trainer's gradient_clip_val")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def as_ppo_config(value: PPOConfig | dict | None) -> PPOConfig:
    """A PPOConfig from itself, its dict form (unknown keys refused), or None (the defaults)."""
    if isinstance(value, PPOConfig):
        return value
    if value is not None and not isinstance(value, dict):
        raise ConfigError(f"{FIELD} must be a mapping of PPO options (ppo_epochs, kl, ...); got {value!r}")
    return PPOConfig(**_known(PPOConfig, value or {}, FIELD))


def _known(cls, values: dict, where: str) -> dict:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown option(s) {unknown}; options: {sorted(names)}")
    return dict(values)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _number(name: str, value, *, minimum: float, strict: bool = False, maximum: float | None = None,
            hint: str = "") -> None:
    low_ok = _is_number(value) and (value > minimum if strict else value >= minimum)
    if not low_ok or (maximum is not None and value > maximum):
        bound = f"{'>' if strict else '>='} {minimum}" + (f" and <= {maximum}" if maximum is not None else "")
        raise ConfigError(f"{name} must be a number {bound}{' (' + hint + ')' if hint else ''}; got {value!r}")


def _integer(name: str, value, *, minimum: int, hint: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}{' (' + hint + ')' if hint else ''}; got {value!r}")


def _flag(name: str, value) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be true or false; got {value!r}")
