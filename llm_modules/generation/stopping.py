"""When a row's generation is over: a stop token, or a stop string in its generated text.

Layout of what is returned (Hugging Face's): a row ends *with* the token that stopped it, the EOS id
or the token that completed a stop string, and every later position holds ``pad_token_id``.
The stop string is not cut out of the text: the token that completed it may carry a few more
characters after it (tokens are not characters), and the caller can trim the decoded text at the
string if it wants it exact.

Stop strings are searched in the *generated* text only (decoded without the prompt), so a prompt
that already contains one does not end generation at once; a string that straddles the prompt's
end is therefore not seen either.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from llm_modules.registry import ConfigError


class StopCondition:
    """``stop(generated, rows) -> BoolTensor (N,)``: which rows just ended.

    ``generated`` (N, t) holds only the new tokens of each row (no prompt); ``rows`` (N,) limits
    the check to rows still running (decoding text costs time; the others are reported False).
    """

    def __init__(self, eos_ids: Sequence[int] = (), stop_strings: Sequence[str] = (), tokenizer=None):
        if stop_strings and tokenizer is None:
            raise ConfigError(
                "stop_strings need a tokenizer to decode the generated text; pass tokenizer=..., "
                "or use a model whose checkpoint carries one"
            )
        self.eos_ids = tuple(int(i) for i in eos_ids)
        self.stop_strings = tuple(stop_strings)
        self.tokenizer = tokenizer
        self._eos = None

    @property
    def can_stop(self) -> bool:
        return bool(self.eos_ids or self.stop_strings)

    def __call__(self, generated: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        ended = torch.zeros(generated.shape[0], dtype=torch.bool, device=generated.device)
        if generated.shape[1] == 0:
            return ended
        if self.eos_ids:
            if self._eos is None or self._eos.device != generated.device:
                self._eos = torch.tensor(self.eos_ids, device=generated.device)
            ended |= torch.isin(generated[:, -1], self._eos)
        if self.stop_strings:
            ended |= self._text_stops(generated, ended if rows is None else ended | ~rows)
        return ended if rows is None else ended & rows

    def _text_stops(self, generated: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """Rows whose decoded generated text contains a stop string (rows in ``skip`` are not decoded)."""
        found = torch.zeros_like(skip)
        for row in (~skip).nonzero().flatten().tolist():
            text = self.tokenizer.decode(generated[row].tolist())
            found[row] = any(s in text for s in self.stop_strings)
        return found
