"""lm-eval's ``generate_until`` requests, batched, for the lm-eval model (``lm_eval_model``).

Requests are grouped by identical generation options (a batch decodes one way), sorted longest
context first within a group (little padding) and generated ``batch_size`` at a time with one
``generate`` call each: contexts left-padded (``generation.prompts.left_pad``), the KV cache, each row
stopping at EOS or once its text holds one of lm-eval's ``until`` strings; the text is then cut at
the first of them, as lm-eval's ``hf`` model does. Greedy results therefore equal one-at-a-time
generation and ``hf`` on the exported model.

Options (lm-eval's ``gen_kwargs``, normalised by ``lm_eval.models.utils.normalize_gen_kwargs``):
``until``, ``max_gen_toks`` (or its aliases; default 256), ``do_sample`` with ``temperature``,
``top_p``, ``top_k``, and ``repetition_penalty``, ``num_beams``, ``length_penalty``, ``early_stopping``.
``do_sample`` with ``temperature: 0`` is greedy. A ``max_gen_toks`` that leaves a decoder no room for
its context (where ``hf`` stops with an assertion) is cut to half the window, with a warning
(``_fitting``). Any other option is refused by name rather than ignored. Sampling draws from the model's own
``torch.Generator`` (``LLMModulesLM``'s ``seed``), so a run, ``repeats`` for self-consistency
included, is reproducible.
"""

from __future__ import annotations

import json
import logging

import torch

from llm_modules.generation.prompts import left_pad, new_tokens
from llm_modules.registry import ConfigError

#: gen_kwargs passed on to ``generate`` (beside until / max_gen_toks, which are handled here)
PASSED = ("do_sample", "temperature", "top_p", "top_k", "repetition_penalty", "num_beams", "length_penalty",
          "early_stopping")
SAMPLING = ("temperature", "top_p", "top_k")


def generate_until(lm, requests: list[tuple[str, dict]]) -> list[str]:
    """Texts for ``(context, gen_kwargs)`` requests, in their order. ``lm``: an ``LLMModulesLM``."""
    groups: dict[str, list[int]] = {}
    for i, (_, gen_kwargs) in enumerate(requests):
        groups.setdefault(json.dumps(gen_kwargs, sort_keys=True, default=str), []).append(i)
    out: list[str | None] = [None] * len(requests)
    with torch.inference_mode():
        for members in groups.values():
            options, until, max_new = generation_options(requests[members[0]][1])
            max_new = _fitting(lm, max_new)
            encoded = {i: _context_ids(lm, requests[i][0], max_new) for i in members}
            members = sorted(members, key=lambda i: (-len(encoded[i]), requests[i][0]))
            for start in range(0, len(members), lm.batch_size):
                batch = members[start:start + lm.batch_size]
                for i, text in zip(batch, _generate(lm, [encoded[i] for i in batch], options, until, max_new)):
                    out[i] = text
    return out  # type: ignore[return-value]


def generation_options(gen_kwargs: dict) -> tuple[dict, list[str], int]:
    """(``generate`` options, stop strings, max new tokens) from a request's gen_kwargs."""
    from lm_eval.models.utils import normalize_gen_kwargs

    kwargs = normalize_gen_kwargs(dict(gen_kwargs), 256)
    until = kwargs.pop("until", None) or []
    until = [s for s in ([until] if isinstance(until, str) else until) if s]
    max_new = int(kwargs.pop("max_gen_toks"))
    unknown = sorted(set(kwargs) - set(PASSED))
    if unknown:
        raise ConfigError(f"gen_kwargs {unknown} are not supported by the llm-modules lm-eval model; "
                         f"it understands until, max_gen_toks, {', '.join(PASSED)}")
    sample = bool(kwargs.get("do_sample")) and kwargs.get("temperature", 1.0) not in (0, 0.0)
    options = {k: v for k, v in kwargs.items() if k != "do_sample" and (sample or k not in SAMPLING)}
    options["do_sample"] = sample
    return options, until, max_new


def _context_ids(lm, context: str, max_new: int) -> list[int]:
    """The context's ids, left-truncated as lm-eval's ``hf`` does: a decoder keeps room for the new
    tokens, an encoder reads up to the model's length. An empty context is the prefix token (BOS,
    else EOS): a decoder needs one token to continue, an encoder one to attend to."""
    ids = lm.tok_encode(context)
    if lm.seq2seq:
        return ids[-lm.max_length:] or [lm.prefix_token_id]
    return ids[-(lm.max_length - max_new):] or [lm.prefix_token_id]


def _fitting(lm, max_new: int) -> int:
    """``max_gen_toks``, unless it leaves a decoder no room for its context (lm-eval's ``hf`` stops
    with an assertion there): then half the model's length, the context keeping the other half, with
    a warning. A task written for long windows (a code task's 128 new tokens) still runs on a small
    model, and wherever ``hf`` runs the two agree."""
    if lm.seq2seq or max_new < lm.max_length:
        return max_new
    fitted = max(lm.max_length // 2, 1)
    logging.getLogger(__name__).warning(
        "max_gen_toks=%d leaves no room for the context in the model's %d tokens; generating at most %d",
        max_new, lm.max_length, fitted)
    return fitted


def _generate(lm, rows: list[list[int]], options: dict, until: list[str], max_new: int) -> list[str]:
    module = lm.module
    pad = lm.pad_token_id
    ids, mask = left_pad(rows, pad)
    generator = lm.generator if options["do_sample"] else None
    out = module.generate(ids.to(lm.device), attention_mask=mask.to(lm.device), max_new_tokens=max_new,
                          stop_strings=until or None, tokenizer=lm.tokenizer, eos_token_id=lm.stop_ids,
                          pad_token_id=pad, generator=generator, **options)
    texts = []
    for tokens in new_tokens(module, out.cpu(), ids.shape[1], lm.stop_ids, pad):
        text = lm.tok_decode(tokens)
        for stop in until:
            text = text.split(stop)[0]
        texts.append(text)
    return texts
