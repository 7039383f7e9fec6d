"""Beam search over a session, with transformers' (v5) scoring and stopping rules so results match.

Per prompt row, ``num_beams`` running hypotheses are extended by every token; the best
``2 * num_beams`` (more with several EOS ids) continuations are kept as candidates, so that even
when the best ones end, ``num_beams`` unfinished ones remain to go on with. A candidate that ends
(stop token, stop string, or the last allowed step) among the top ``num_beams`` enters the row's
list of ``num_beams`` finished hypotheses, scored

    sum of token log-probs / (number of generated tokens, the stop token included) ** length_penalty

so ``length_penalty > 0`` favours longer outputs and ``< 0`` shorter ones. The row's answer is its
best finished hypothesis.

When a row is done (``early_stopping``):
- ``True``: as soon as it holds ``num_beams`` finished hypotheses.
- ``False``: when the best running score divided by the *current* length penalty can no longer beat
  the worst finished one (a heuristic: with ``length_penalty > 0`` a longer beam could still win).
- ``"never"``: as ``False``, but for ``length_penalty > 0`` the bound uses ``max_new_tokens``, the
  longest a beam may become, so the result is exactly the best reachable hypothesis.

Logits processors (repetition penalty) act on log-probabilities here, as in transformers.
"""

from __future__ import annotations

import torch

from llm_modules.generation.processors import LogitsProcessors
from llm_modules.generation.stopping import StopCondition

#: the score of "no hypothesis here" (transformers' value, kept so comparisons tie the same way)
NONE = -1.0e9


def beam_search(
    session,
    num_beams: int,
    max_new_tokens: int,
    processors: LogitsProcessors,
    stop: StopCondition,
    pad_token_id: int,
    length_penalty: float = 1.0,
    early_stopping: bool | str = False,
) -> torch.Tensor:
    """The best beam per row: (B, P + n), padded with ``pad_token_id`` after each row's end."""
    prefix, prefix_mask = session.prefix_ids, session.prefix_mask
    if max_new_tokens == 0:
        return prefix.clone()
    batch, width = prefix.shape
    device = prefix.device
    logits = session.start()
    vocab = logits.shape[-1]
    session.reorder(torch.arange(batch, device=device).repeat_interleave(num_beams))
    logits = logits.repeat_interleave(num_beams, dim=0)
    beam_prefix = prefix.repeat_interleave(num_beams, dim=0)
    beam_seen = torch.cat((prefix_mask.repeat_interleave(num_beams, dim=0).to(prefix.dtype),
                           prefix.new_ones((batch * num_beams, max_new_tokens))), dim=1)
    candidates = min(max(2, 1 + len(stop.eos_ids)) * num_beams, num_beams * vocab)
    among_best = torch.arange(candidates, device=device) < num_beams

    # running hypotheses: generated tokens (B, beams, max_new) and summed log-probs; only beam 0 is
    # real at first (all beams start equal, and distinct beams must come from distinct tokens)
    running = prefix.new_full((batch, num_beams, max_new_tokens), pad_token_id)
    running_scores = torch.zeros(batch, num_beams, device=device)
    running_scores[:, 1:] = NONE
    # finished hypotheses, best first
    done = running.clone()
    done_scores = torch.full((batch, num_beams), NONE, device=device)
    done_lengths = torch.zeros(batch, num_beams, dtype=torch.long, device=device)
    is_done = torch.zeros(batch, num_beams, dtype=torch.bool, device=device)
    can_improve = torch.ones(batch, dtype=torch.bool, device=device)

    for step in range(max_new_tokens):
        sequences = torch.cat((beam_prefix, running.view(batch * num_beams, -1)[:, :step]), dim=1)
        logprobs = processors(logits.log_softmax(dim=-1), sequences, beam_seen[:, : width + step])
        totals = (logprobs.view(batch, num_beams, vocab) + running_scores.unsqueeze(-1)).view(batch, -1)
        cand_scores, flat = torch.topk(totals, candidates, dim=-1)
        cand_beam, cand_token = flat // vocab, flat % vocab
        cand = _take(running, cand_beam).clone()
        cand[:, :, step] = cand_token
        ends = stop(cand.view(batch * candidates, -1)[:, : step + 1]).view(batch, candidates)
        if step + 1 == max_new_tokens:
            ends = torch.ones_like(ends)

        # a. the unfinished candidates with the best scores run on
        alive_scores = cand_scores + ends.float() * NONE
        keep = torch.topk(alive_scores, num_beams, dim=-1).indices
        running, running_scores = _take(cand, keep), _take(alive_scores, keep)
        origin = _take(cand_beam, keep)

        # b. ended candidates among the top num_beams join the finished list if they beat it
        final_scores = cand_scores / ((step + 1) ** length_penalty)
        admit = ends & among_best & can_improve.unsqueeze(1)
        if early_stopping is True:
            admit &= ~is_done.all(dim=1, keepdim=True)
        final_scores = final_scores.masked_fill(~admit, NONE)
        merged = torch.topk(torch.cat((done_scores, final_scores), dim=1), num_beams, dim=-1).indices
        done = _take(torch.cat((done, cand), dim=1), merged)
        done_scores = _take(torch.cat((done_scores, final_scores), dim=1), merged)
        lengths = torch.cat((done_lengths, torch.full_like(cand_token, step + 1)), dim=1)
        done_lengths = _take(lengths, merged)
        is_done = _take(torch.cat((is_done, admit), dim=1), merged)

        # c. is any row still open?
        bound_length = max_new_tokens if early_stopping == "never" and length_penalty > 0 else step + 1
        best_running = running_scores[:, :1] / (bound_length ** length_penalty)
        worst_done = torch.where(is_done, done_scores.min(dim=1, keepdim=True).values, NONE)
        can_improve &= (best_running > worst_done).any(dim=1)
        if not can_improve.any() or (early_stopping is True and is_done.all()) or ends.all():
            break
        session.reorder((origin + torch.arange(batch, device=device).unsqueeze(1) * num_beams).flatten())
        logits = session.step(running[:, :, step].flatten())

    generated = int(done_lengths[:, 0].max())
    return torch.cat((prefix, done[:, 0, :generated]), dim=1)


def _take(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``values[b, index[b, j], ...]`` for every row b: pick hypotheses by their slot."""
    while index.ndim < values.ndim:
        index = index.unsqueeze(-1)
    return torch.take_along_dim(values, index, dim=1)
