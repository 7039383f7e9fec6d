"""Where PPO's reward comes from (``model.reward``): a RewardModel checkpoint, or a Python function.

- A path to a checkpoint of ``llm_modules.alignment.RewardModel`` (``configs/align/reward.yaml``
  trains one): it scores prompt + response token ids as the policy sampled them, so it must read
  the policy's tokenizer. It is loaded (``checkpoint.load_checkpoint``) when training starts, not
  when the PPO module is built, so a PPO checkpoint still loads for generation where the reward
  model is not; it is frozen, kept out of PPO's own checkpoints, and runs in eval mode.
- An import path ``package.module:function``, or ``{name: package.module:function, **options}``
  whose options go to the function as keywords (``alignment.toy_rewards`` documents the call and
  ships examples). The function is imported when PPO is built, so a typo fails at once.

The spec stays plain data (a string or a mapping), which is what the checkpoint's
hyper-parameters keep; a Python function given directly is recorded by its import path.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from llm_modules.registry import ConfigError

FIELD = "model.reward"
IMPORT_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


def reward_spec(value: Any) -> str | dict[str, Any]:
    """``model.reward`` as plain data, checked: a checkpoint path, or a function's import path
    (alone or as ``name`` with options). A function must import now."""
    if callable(value) and not isinstance(value, type):
        value = _import_path_of(value)
    if isinstance(value, dict):
        options = dict(value)
        name = options.pop("name", None)
        if callable(name):
            name = _import_path_of(name)
        if not isinstance(name, str) or not IMPORT_PATH.match(name):
            raise ConfigError(f"{FIELD}: a mapping names a function as name: package.module:function (its other keys "
                              f"are the function's options); got name={name!r}")
        import_function(name)
        return {"name": name, **options}
    if isinstance(value, (str, Path)):
        value = str(value)
        if IMPORT_PATH.match(value):
            import_function(value)
        return value
    raise ConfigError(
        f"{FIELD} is required: a RewardModel checkpoint path, a function as package.module:function, or "
        f"{{name: package.module:function, option: value}} (e.g. llm_modules.alignment.toy_rewards:token_share); "
        f"got {value!r}"
    )


def _import_path_of(fn: Callable) -> str:
    """``module:qualname`` of a function that importing that path gives back, else a ConfigError."""
    path = f"{getattr(fn, '__module__', '')}:{getattr(fn, '__qualname__', '')}"
    try:
        ok = IMPORT_PATH.match(path) is not None and import_function(path) is fn
    except ConfigError:
        ok = False
    if not ok:
        raise ConfigError(f"{FIELD}: {fn!r} cannot be named by an import path (a lambda, a closure or a function "
                          "defined in __main__); define it at the top level of an importable module, or pass "
                          "{name: package.module:function, option: value} for options")
    return path


def import_function(path: str) -> Callable:
    module_name, _, attribute = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigError(f"{FIELD}: cannot import module {module_name!r} ({err}); check the import path "
                          "package.module:function and that the package is installed") from None
    target: Any = module
    for part in attribute.split("."):
        target = getattr(target, part, None)
        if target is None:
            raise ConfigError(f"{FIELD}: module {module_name!r} has no {attribute!r}; check the name after the colon")
    if not callable(target):
        raise ConfigError(f"{FIELD}: {path!r} is not callable; name a function")
    return target


class FunctionReward:
    """A Python function's rewards (the call is documented in ``alignment.toy_rewards``)."""

    def __init__(self, spec: str | dict[str, Any]):
        options = dict(spec) if isinstance(spec, dict) else {"name": spec}
        self.path = options.pop("name")
        self.options = options
        self.function = import_function(self.path)

    def __call__(self, samples, tokenizer, prompts: list[str] | None = None) -> torch.Tensor:
        prompt_texts, response_texts = samples.texts(tokenizer, prompts)
        out = self.function(prompts=prompt_texts, responses=response_texts, prompt_ids=samples.prompt_id_lists(),
                            response_ids=samples.response_id_lists(), **self.options)
        return as_rewards(out, samples.sequences.shape[0], self.path, samples.sequences.device)


class ModelReward:
    """A frozen RewardModel's scores, loaded on first use (see the module docstring)."""

    def __init__(self, path: str):
        self.path = path
        self.model: nn.Module | None = None

    def load(self, policy) -> None:
        """Load the checkpoint (once) and check it can read the policy's token ids."""
        if self.model is not None:
            return
        from llm_modules.checkpoint import load_checkpoint

        if not Path(self.path).is_file():
            raise ConfigError(f"{FIELD}: {self.path!r} is neither an existing checkpoint file nor an import path "
                              "package.module:function; give a RewardModel checkpoint (configs/align/reward.yaml "
                              "trains one) or a reward function")
        try:
            model = load_checkpoint(self.path)
        except ConfigError as err:
            raise ConfigError(f"{FIELD}: {err}") from None
        if not callable(getattr(model, "score", None)):
            raise ConfigError(f"{FIELD}: {self.path!r} holds a {model.kind}, not a RewardModel; train one with "
                              "configs/align/reward.yaml, or give a reward function")
        ours, theirs = policy.tokenizer_bytes, getattr(model, "tokenizer_bytes", None)
        if model.config.vocab_size != policy.config.vocab_size or (ours and theirs and ours != theirs):
            raise ConfigError(f"{FIELD}: the reward model {self.path!r} reads another tokenizer than the policy, so "
                              "it would score other pieces than were sampled; train the reward model from the "
                              "policy's base (model.init_from of configs/align/reward.yaml)")
        model.requires_grad_(False)
        self.model = model.eval()

    @torch.no_grad()
    def __call__(self, samples, tokenizer=None, prompts: list[str] | None = None) -> torch.Tensor:
        if self.model is None:
            raise RuntimeError("ModelReward.load(policy) must run before scoring")
        device = samples.sequences.device
        if next(self.model.parameters()).device != device:
            self.model.to(device)
        prefix_lengths = None
        if getattr(self.model, "base_kind", None) == "PrefixLM":  # it reads the prompt as its prefix
            prefix_lengths = samples.attention_mask[:, : samples.prompt_width].sum(1)
        scores = self.model.score(samples.sequences, samples.attention_mask, prefix_lengths)
        return as_rewards(scores, samples.sequences.shape[0], self.path, device)


def build_reward(spec: str | dict[str, Any]) -> FunctionReward | ModelReward:
    if isinstance(spec, dict) or IMPORT_PATH.match(spec):
        return FunctionReward(spec)
    return ModelReward(spec)


def as_rewards(values: Any, batch: int, source: str, device: torch.device) -> torch.Tensor:
    """(B,) float32 rewards from what a reward source returned, or a ConfigError naming it."""
    try:
        rewards = torch.as_tensor(values if isinstance(values, torch.Tensor) else list(values), dtype=torch.float32)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{FIELD}: {source} returned {type(values).__name__}, not one number per rollout ({err})") from None
    rewards = rewards.detach().reshape(-1).to(device)
    if rewards.numel() != batch:
        raise ConfigError(f"{FIELD}: {source} returned {rewards.numel()} rewards for {batch} rollouts; return one "
                          "number per rollout")
    if not bool(torch.isfinite(rewards).all()):
        raise ConfigError(f"{FIELD}: {source} returned a non-finite reward ({rewards.tolist()}); rewards must be finite")
    return rewards
