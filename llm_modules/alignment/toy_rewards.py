"""Toy rewards: rules on the response that a small model can learn to satisfy in a few dozen PPO
rollouts on a CPU, for trying PPO (``configs/align/ppo.yaml``), its tests and its tutorial without
training a reward model first.

A reward function for PPO (``model.reward: pkg.module:function``, options as
``{name: pkg.module:function, option: value}``) is called once per rollout batch with keywords,
each a list with one entry per rollout:

- ``prompts`` / ``responses``: the texts (None when the policy carries no tokenizer);
- ``prompt_ids`` / ``response_ids``: the token ids; a response's ids stop before its stop token
  (EOS), as its text does;

plus the configured options, and returns one number per rollout (a list or a tensor). Take the
keywords you use and ``**_`` for the rest, so new keywords do not break the function.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from llm_modules.registry import ConfigError


def token_share(*, response_ids: Sequence[Sequence[int]], token_id: int | Sequence[int], **_) -> list[float]:
    """The share of each response's tokens that are ``token_id`` (or any of a list of ids), in [0, 1];
    0 for an empty response. The simplest reward there is: the policy only has to make one token
    more likely, whatever came before."""
    wanted = {int(token_id)} if isinstance(token_id, int) else {int(t) for t in token_id}
    return [sum(t in wanted for t in ids) / len(ids) if ids else 0.0 for ids in response_ids]


def word_share(*, responses: Sequence[str] | None, word: str, **_) -> list[float]:
    """The share of each response's words that are ``word`` (letters and digits; case ignored), in
    [0, 1]; 0 for a response without words. A rule on the text, so it holds whatever the tokenizer."""
    if responses is None:
        raise ConfigError("toy_rewards.word_share reads the response texts, and the policy has no tokenizer; "
                          "start from a checkpoint that carries one (model.init_from), or use token_share")
    target = word.lower()
    shares = []
    for text in responses:
        words = re.findall(r"\w+", text.lower())
        shares.append(sum(w == target for w in words) / len(words) if words else 0.0)
    return shares
