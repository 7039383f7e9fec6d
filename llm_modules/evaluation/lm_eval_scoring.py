"""Log-likelihood of token continuations, batched, for the lm-eval model (``lm_eval_model``).

lm-eval hands over rows ``(key, context_ids, continuation_ids)``; each gets the summed log-probability
of its continuation and whether every continuation token is the model's greedy choice. What the
model sees follows lm-eval's own Hugging Face model (``hf``), so the numbers are the same:

- decoders (CausalLM, PrefixLM): ``(context + continuation)[-(max_length + 1):][:-1]``, right-padded;
  a PrefixLM reads what is left of the context as its prefix (``prefix_lengths``), as it was trained
  (see ``lm_eval_model``'s docstring);
- Seq2SeqLM: the context's last ``max_length`` tokens go to the encoder, the continuation to the
  decoder after the decoder start token (``config.pad_token_id``, T5's convention).

Why it is fast: rows are sorted longest first (batches of similar length pad little); rows whose
model input is identical (a multiple-choice question with one-token answers, repeated requests) run
once and share the result; the LM head and the log-softmax run only on the positions that score a
continuation token, never on the whole (B, T, V) logits; and everything runs under
``torch.inference_mode``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

Row = tuple[object, Sequence[int], Sequence[int]]


class Scorer:
    """``scorer(rows) -> [(logprob, is_greedy)]`` in the rows' order, ``batch_size`` model inputs at a time."""

    def __init__(self, module, batch_size: int, max_length: int, device: torch.device):
        self.module, self.batch_size, self.max_length, self.device = module, batch_size, max_length, device
        self.kind = module.kind

    def __call__(self, rows: Sequence[Row]) -> list[tuple[float, bool]]:
        inputs: dict[tuple, list[int]] = {}  # model input -> the rows it scores
        for i, (_, context, continuation) in enumerate(rows):
            inputs.setdefault(self._input(context, continuation), []).append(i)
        order = sorted(inputs, key=lambda key: (-_length(key), key))
        results: list[tuple[float, bool] | None] = [None] * len(rows)
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                batch = order[start:start + self.batch_size]
                for key, logprobs in zip(batch, self._logprobs(batch)):
                    for i in inputs[key]:
                        results[i] = _score(logprobs, list(rows[i][2]))
        return results  # type: ignore[return-value]

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
        start = self.module.config.pad_token_id
        encoder = [list(ids) for ids, _ in batch]
        decoder = [[start, *tail] for _, tail in batch]
        ids, mask = _right_pad(encoder, self.device)
        dec_ids, _ = _right_pad(decoder, self.device)
        logits = self.module(ids, attention_mask=mask, decoder_input_ids=dec_ids)
        return [F.log_softmax(logits[r, :len(d)].float(), dim=-1) for r, d in enumerate(decoder)]


def _length(key: tuple) -> int:
    """Tokens a key puts through the model (its sort key: longest first)."""
    ids, other = key
    return len(ids) + (len(other) if isinstance(other, tuple) else 0)


def _right_pad(rows: list[list[int]], device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for r, row in enumerate(rows):
        ids[r, :len(row)] = torch.tensor(row, dtype=torch.long)
        mask[r, :len(row)] = 1
    return ids.to(device), mask.to(device)


def _score(logprobs: torch.Tensor, continuation: list[int]) -> tuple[float, bool]:
    """Sum of the continuation's log-probabilities (its tokens are predicted by the last
    ``len(continuation)`` positions) and whether each is the argmax."""
    piece = logprobs[-len(continuation):]
    target = torch.tensor(continuation, device=piece.device)
    greedy = bool((piece.argmax(-1) == target).all())
    return float(piece.gather(-1, target[:, None]).sum()), greedy
