"""Greedy decoding and sampling over a session, and :func:`decode`, which picks the method.

The algorithms talk only to a session (``llm_modules.generation.session``): ``prefix_ids`` and
``prefix_mask`` (what the returned rows start with), ``start()`` (logits for the first new token),
``step(tokens)`` (append one token per row, logits for the next) and ``reorder(index)``. That keeps
them identical for decoders and encoder-decoders, and testable on a fake session whose logits are
known in closed form.

Output layout (Hugging Face's): (B, P + n) with the prefix first; n <= max_new_tokens is the number
of steps run, fewer only when every row stopped early; a row that stopped holds ``pad_token_id``
after its stop token.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from llm_modules.generation.beam import beam_search
from llm_modules.generation.config import GenerationConfig
from llm_modules.generation.processors import LogitsProcessors
from llm_modules.generation.stopping import StopCondition
from llm_modules.registry import ConfigError


def decode(
    session,
    config: GenerationConfig,
    *,
    tokenizer=None,
    generator: torch.Generator | None = None,
    streamer: Callable[[torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Run the decoding method ``config`` asks for (greedy, sampling or beam search) on ``session``.

    ``config.eos_token_id`` / ``pad_token_id`` are taken as given here (``generate`` fills the
    model's defaults in first).
    """
    stop = StopCondition(config.eos_ids, config.stop_string_list, tokenizer)
    if stop.can_stop and config.pad_token_id is None:
        raise ConfigError("pad_token_id is needed to fill rows that stop early; pass pad_token_id=...")
    pad = config.pad_token_id if config.pad_token_id is not None else 0
    if generator is not None and config.seed is not None:
        raise ConfigError("give either seed or generator, not both (a generator carries its own seed)")
    processors = LogitsProcessors(config)
    if config.num_beams > 1:
        if streamer is not None:
            raise ConfigError("streamer works with greedy decoding and sampling only; set num_beams: 1 to stream")
        return beam_search(session, config.num_beams, config.max_new_tokens, processors, stop, pad,
                           config.length_penalty, config.early_stopping)
    if config.do_sample:
        generator = _generator(generator, config.seed, session.prefix_ids.device)
    return greedy_or_sample(session, config.max_new_tokens, processors, stop, pad,
                            generator if config.do_sample else None, streamer)


def greedy_or_sample(
    session,
    max_new_tokens: int,
    processors: LogitsProcessors,
    stop: StopCondition,
    pad_token_id: int,
    generator: torch.Generator | None = None,
    streamer: Callable[[torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """One token per row and step: the most likely one, or (with ``generator``) a sample.

    Every row is sampled at every step, finished ones too (their token is then replaced by the pad),
    so the random stream consumed per step does not depend on which rows finished; that is what
    transformers does, and it keeps seeded results equal to theirs.
    """
    prefix, prefix_mask = session.prefix_ids, session.prefix_mask
    batch, width = prefix.shape
    out = torch.cat((prefix, prefix.new_full((batch, max_new_tokens), pad_token_id)), dim=1)
    seen = torch.cat((prefix_mask.to(prefix.dtype), prefix.new_ones((batch, max_new_tokens))), dim=1)
    running = torch.ones(batch, dtype=torch.bool, device=prefix.device)
    steps = 0
    while steps < max_new_tokens:
        logits = session.start() if steps == 0 else session.step(out[:, width + steps - 1])
        end = width + steps
        scores = processors(logits, out[:, :end], seen[:, :end])
        if generator is None:
            tokens = scores.argmax(dim=-1)
        else:
            tokens = torch.multinomial(scores.softmax(dim=-1), 1, generator=generator).squeeze(1)
        if stop.can_stop:  # (else every row runs to the end: no masking, no check, no sync per step)
            tokens = tokens.masked_fill(~running, pad_token_id)
        out[:, end] = tokens
        steps += 1
        if streamer is not None:
            streamer(tokens)
        if stop.can_stop:
            running &= ~stop(out[:, width:end + 1], running)
            if not running.any():
                break
    return out[:, : width + steps]


def _generator(generator: torch.Generator | None, seed: int | None, device: torch.device) -> torch.Generator:
    """The random stream for sampling: the caller's, or a fresh one (seeded, or from OS entropy);
    never torch's global generator, so generating does not disturb the caller's random state."""
    if generator is not None:
        if torch.device(generator.device).type != torch.device(device).type:
            raise ConfigError(
                f"generator is on {generator.device} but the model runs on {device}; "
                f"create it with torch.Generator(device={str(device)!r})"
            )
        return generator
    fresh = torch.Generator(device=device)
    if seed is None:
        fresh.seed()
    else:
        fresh.manual_seed(seed)
    return fresh
