"""Log-likelihood of token continuations, batched, for the lm-eval model (``lm_eval_model``).

lm-eval hands over rows ``(key, context_ids, continuation_ids)``; each gets the summed log-probability
of its continuation and whether every continuation token is the model's greedy choice. What the
model sees follows lm-eval's own Hugging Face model (``hf``), so the numbers are the same:

- decoders (CausalLM, PrefixLM): ``(context + continuation)[-(max_length + 1):][:-1]``, right-padded;
  a PrefixLM reads what is left of the context as its prefix (``prefix_lengths``), as it was trained
  (see ``lm_eval_model``'s docstring);
- Seq2SeqLM: the context's last ``max_length`` tokens go to the encoder, the continuation to the
  decoder after the decoder start token (``config.pad_token_id``, T5's convention).

Why it is fast:

- a decoder reads a context shared by several continuations (a multiple-choice question) once: the
  contexts of a batch run left-padded into a KV cache, which is then repeated for each continuation,
  and only the continuations run over it (``_shared_contexts``); a Seq2SeqLM's encoder runs once per
  context of a batch;
- other rows are sorted longest first (batches of similar length pad little), and rows whose model
  input is identical (one-token answers, repeated requests) run once and share the result;
- the LM head and the log-softmax run only on the positions that score a continuation token, never
  on the whole (B, T, V) logits; everything runs under ``torch.inference_mode``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from llm_modules.padding import pad_sequences

Row = tuple[object, Sequence[int], Sequence[int]]


class Scorer:
    """``scorer(rows) -> [(logprob, is_greedy)]`` in the rows' order, ``batch_size`` model inputs at a time."""

    def __init__(self, module, batch_size: int, max_length: int, device: torch.device):
        self.module, self.batch_size, self.max_length, self.device = module, batch_size, max_length, device
        self.kind = module.kind

    def __call__(self, rows: Sequence[Row]) -> list[tuple[float, bool]]:
        results: list[tuple[float, bool] | None] = [None] * len(rows)
        shared = self._shared_contexts(rows)
        inputs: dict[tuple, list[int]] = {}  # model input -> the rows it scores
        for i, (_, context, continuation) in enumerate(rows):
            if i not in shared:
                inputs.setdefault(self._input(context, continuation), []).append(i)
        if self.kind == "Seq2SeqLM":  # a context's rows side by side: its encoder runs once per batch
            order = sorted(inputs, key=lambda key: (-len(key[0]), key[0], -len(key[1]), key[1]))
        else:
            order = sorted(inputs, key=lambda key: (-_length(key), key))
        with torch.inference_mode():
            self._score_shared(rows, shared, results)
            for start in range(0, len(order), self.batch_size):
                batch = order[start:start + self.batch_size]
                for key, logprobs in zip(batch, self._logprobs(batch)):
                    for i in inputs[key]:
                        results[i] = _score(logprobs, list(rows[i][2]))
        return results  # type: ignore[return-value]

    def _shared_contexts(self, rows: Sequence[Row]) -> dict[int, tuple]:
        """Rows of a decoder whose context has several continuations (and that need no truncation):
        row index -> its context, scored by ``_score_shared``."""
        if self.kind not in ("CausalLM", "PrefixLM") or not hasattr(self.module.model, "hidden"):
            return {}
        by_context: dict[tuple, list[int]] = {}
        for i, (_, context, continuation) in enumerate(rows):
            if context and continuation and len(context) + len(continuation) <= self.max_length + 1:
                by_context.setdefault(tuple(context), []).append(i)
        return {i: context for context, members in by_context.items() if len(members) > 1 for i in members}

    def _score_shared(self, rows: Sequence[Row], shared: dict[int, tuple], results: list) -> None:
        """Contexts, longest first, in batches of at most ``batch_size`` continuation rows: the
        contexts' keys and values go to a cache, repeated per continuation; each continuation but its
        last token then runs over it. The context's last position predicts a continuation's first token.
        A PrefixLM reads each context as its prefix (both directions), the continuations causally after it."""
        from llm_modules.generation.prompts import left_pad
        from llm_modules.nn.kv_cache import KVCache

        groups: dict[tuple, list[int]] = {}
        for i, context in shared.items():
            groups.setdefault(context, []).append(i)
        contexts = sorted(groups, key=lambda c: (-len(c), c))
        model = self.module.model
        while contexts:
            batch, count = [], 0
            while contexts and (not batch or count + len(groups[contexts[0]]) <= self.batch_size):
                count += len(groups[contexts[0]])
                batch.append(contexts.pop(0))
            ids, mask = left_pad(batch, 0)
            ids, mask = ids.to(self.device), mask.to(self.device)
            prefix = torch.tensor([len(c) for c in batch], device=self.device) if self.kind == "PrefixLM" else None
            cache = KVCache()
            last = model.hidden(ids, mask, prefix, cache=cache)[:, -1]
            members = [(g, i) for g, context in enumerate(batch) for i in groups[context]]
            origin = torch.tensor([g for g, _ in members], device=self.device)
            tails = [list(rows[i][2][:-1]) for _, i in members]
            hidden = [last[origin]]
            if any(tails):
                cache.reorder(origin)
                tail_ids, tail_mask = _right_pad([t or [0] for t in tails], self.device)
                hidden.append(model.hidden(tail_ids, torch.cat((mask[origin], tail_mask), 1),
                                           None if prefix is None else prefix[origin], cache=cache))
            lengths = [len(rows[i][2]) for _, i in members]
            picked = torch.cat([torch.cat((hidden[0][r:r + 1], hidden[1][r, :n - 1])) if n > 1 else hidden[0][r:r + 1]
                                for r, n in enumerate(lengths)])
            logprobs = F.log_softmax(model.head(picked).float(), dim=-1).split(lengths)
            for (_, i), scores in zip(members, logprobs):
                results[i] = _score(scores, list(rows[i][2]))

    def _input(self, context: Sequence[int], continuation: Sequence[int]) -> tuple:
        """What the model reads for one row: (ids, decoder ids or prefix length) as a hashable key.
        For decoders the continuation's last token is no input; rows that differ only there share a key
        as long as the scored span is covered (the longest continuation of a key is what is scored)."""
        if self.kind == "Seq2SeqLM":
            return tuple(context[-self.max_length:]), tuple(continuation[-self.max_length:][:-1])
        whole = (list(context) + list(continuation))[-(self.max_length + 1):]
        prefix = max(len(whole) - len(continuation), 0) if self.kind == "PrefixLM" else 0
        return tuple(whole[:-1]), prefix

    def _logprobs(self, batch: list[tuple]) -> list[torch.Tensor]:
        """Per key, the log-probabilities (n, V) at the positions that predict its last n tokens
        (decoder: up to the whole input; seq2seq: every decoder position)."""
        if self.kind == "Seq2SeqLM":
            return self._seq2seq(batch)
        rows = [list(ids) for ids, _ in batch]
        ids, mask = _right_pad(rows, self.device)
        model = self.module.model
        if self.kind == "PrefixLM":
            prefix = torch.tensor([p for _, p in batch], device=self.device)
            hidden = model.hidden(ids, mask, prefix)
        else:
            hidden = model.hidden(ids, mask)
        # Only the positions that can score a continuation token reach the head: the rows' real
        # positions (at most the whole row); the (B, T, V) logits are never built.
        lengths = [len(r) for r in rows]
        picked = torch.cat([hidden[r, :n] for r, n in enumerate(lengths)])
        logprobs = F.log_softmax(model.head(picked).float(), dim=-1)
        return list(logprobs.split(lengths))

    def _seq2seq(self, batch: list[tuple]) -> list[torch.Tensor]:
        """The encoder runs once per distinct context of the batch; the decoder over its output."""
        start = self.module.config.pad_token_id
        contexts = list(dict.fromkeys(ids for ids, _ in batch))
        origin = torch.tensor([contexts.index(ids) for ids, _ in batch], device=self.device)
        decoder = [[start, *tail] for _, tail in batch]
        ids, mask = _right_pad([list(c) for c in contexts], self.device)
        dec_ids, _ = _right_pad(decoder, self.device)
        model = self.module.model
        logits = model.decode(dec_ids, model.encode(ids, mask)[origin], mask[origin])
        return [F.log_softmax(logits[r, :len(d)].float(), dim=-1) for r, d in enumerate(decoder)]


def _length(key: tuple) -> int:
    """Tokens a key puts through the model (its sort key: longest first)."""
    ids, other = key
    return len(ids) + (len(other) if isinstance(other, tuple) else 0)


def _right_pad(rows: list[list[int]], device) -> tuple[torch.Tensor, torch.Tensor]:
    ids, mask = pad_sequences(rows, 0)
    return ids.to(device), mask.to(device)


def _score(logprobs: torch.Tensor, continuation: list[int]) -> tuple[float, bool]:
    """Sum of the continuation's log-probabilities (its tokens are predicted by the last
    ``len(continuation)`` positions) and whether each is the argmax."""
    piece = logprobs[-len(continuation):]
    target = torch.tensor(continuation, device=piece.device)
    greedy = bool((piece.argmax(-1) == target).all())
    return float(piece.gather(-1, target[:, None]).sum()), greedy
