"""Sampling PPO's rollouts: responses to a batch of prompts, through the generation API.

A rollout batch is laid out as one (B, P + n) tensor: the left-padded prompts (``generate``'s
layout: every row's next token in the same column), then the n sampled tokens, a row that stopped
early filled with padding after its stop token. ``response_mask`` (B, n) is 1 on each row's
response tokens, its stop token included (the policy chose to stop, and that choice is trained and
penalized like any other token), and 0 on the padding after it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llm_modules.generation import generate
from llm_modules.generation.prompts import continuation_text
from llm_modules.registry import ConfigError


@dataclass
class Samples:
    """Responses sampled for a batch of prompts (see the module docstring for the layout)."""

    sequences: torch.Tensor       # (B, P + n)
    attention_mask: torch.Tensor  # (B, P + n): the prompts' padding mask, then response_mask
    prompt_width: int             # P
    response_mask: torch.Tensor   # (B, n), float
    stop_ids: tuple[int, ...]     # what ended a row

    @property
    def responses(self) -> torch.Tensor:
        """(B, n) the sampled tokens (padding after a row's stop token)."""
        return self.sequences[:, self.prompt_width:]

    @property
    def lengths(self) -> torch.Tensor:
        """(B,) response tokens per row, the stop token included."""
        return self.response_mask.sum(1).long()

    def prompt_id_lists(self) -> list[list[int]]:
        prompt_mask = self.attention_mask[:, : self.prompt_width].bool()
        return [row[m].tolist() for row, m in zip(self.sequences[:, : self.prompt_width].cpu(), prompt_mask.cpu())]

    def response_id_lists(self) -> list[list[int]]:
        """Each response's ids, without the stop token that ended it (what its text shows)."""
        rows = []
        for row, length in zip(self.responses.cpu().tolist(), self.lengths.tolist()):
            row = row[:length]
            if row and row[-1] in self.stop_ids:
                row = row[:-1]
            rows.append(row)
        return rows

    def texts(self, tokenizer, prompts: list[str] | None = None) -> tuple[list[str] | None, list[str] | None]:
        """The prompt and response texts (None, None without a tokenizer); ``prompts``: the
        prompts' own texts when the batch carries them (decoding ids may not give them back)."""
        if tokenizer is None:
            return None, None
        prompt_ids, response_ids = self.prompt_id_lists(), self.response_id_lists()
        responses = [continuation_text(tokenizer, p, r) for p, r in zip(prompt_ids, response_ids)]
        return (list(prompts) if prompts is not None else [tokenizer.decode(p) for p in prompt_ids]), responses


def response_mask(responses: torch.Tensor, stop_ids: tuple[int, ...]) -> torch.Tensor:
    """(B, n) float: 1 up to and including each row's first stop token, 0 after it."""
    if not stop_ids:
        return torch.ones_like(responses, dtype=torch.float32)
    is_stop = torch.isin(responses, torch.tensor(stop_ids, device=responses.device))
    stopped_before = (is_stop.long().cumsum(1) - is_stop.long()) > 0
    return (~stopped_before).float()


def sample(model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor | None, *, max_new_tokens: int,
           temperature: float, top_k: int | None, top_p: float | None, stop_ids: tuple[int, ...], pad_id: int,
           seed: int) -> Samples:
    """Sample one response per prompt with ``llm_modules.generation.generate`` (KV cache, seeded
    sampling from its own generator: the caller's random state is left alone)."""
    max_len = getattr(getattr(model, "config", None), "max_seq_len", None)
    if max_len is not None and prompt_ids.shape[1] + max_new_tokens > max_len:
        raise ConfigError(
            f"prompts of {prompt_ids.shape[1]} tokens plus model.ppo.max_new_tokens={max_new_tokens} exceed the "
            f"model's max_seq_len={max_len}; shorten the prompts or lower max_new_tokens"
        )
    if prompt_mask is None:
        prompt_mask = torch.ones_like(prompt_ids)
    out = generate(model, prompt_ids, prompt_mask, max_new_tokens=max_new_tokens, do_sample=True,
                   temperature=temperature, top_k=top_k, top_p=top_p, eos_token_id=list(stop_ids),
                   pad_token_id=pad_id, seed=seed)
    width = prompt_ids.shape[1]
    mask = response_mask(out[:, width:], stop_ids)
    attention = torch.cat((prompt_mask.to(mask.dtype), mask), dim=1).long()
    return Samples(out, attention, width, mask, stop_ids)
