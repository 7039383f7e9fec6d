"""GenerationConfig: how to pick new tokens, as plain data (so a YAML file or CLI flags can hold it).

The names and meanings follow Hugging Face's ``generate`` so that a setting copied from a model card
does the same thing here. Two choices differ on purpose, both to make a mistake visible instead of
silently doing something else:

- An option that has no effect under the chosen method is refused, not ignored: ``temperature``,
  ``top_k`` and ``top_p`` need ``do_sample=True``; ``length_penalty`` and ``early_stopping`` need
  ``num_beams > 1``. (transformers warns and ignores them.)
- ``do_sample=True`` with ``num_beams > 1`` (beam sampling) is refused: pick one.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Union

from llm_modules.registry import ConfigError

@dataclass
class GenerationConfig:
    """Decoding options; checked when built (``ConfigError`` names the field and the fix).

    ``eos_token_id``: one id or a list (generation of a row ends after any of them; ``[]`` = none).
    ``pad_token_id``: what rows that ended early are filled with.
    ``stop_strings``: a row also ends once its generated text contains one of these (needs a tokenizer).
    ``seed``: makes sampling reproducible; sampling never touches torch's global random state.
    """

    max_new_tokens: int = 32
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float = 1.0
    num_beams: int = 1
    length_penalty: float = 1.0
    early_stopping: Union[bool, str] = False
    eos_token_id: Union[int, list[int], None] = None
    pad_token_id: int | None = None
    stop_strings: Union[str, list[str], None] = None
    seed: int | None = None

    def __post_init__(self) -> None:
        self.validate()

    # ---- checks -------------------------------------------------------------------------------------------

    def validate(self) -> None:
        _check_int("max_new_tokens", self.max_new_tokens, minimum=0)
        _check_int("num_beams", self.num_beams, minimum=1)
        if not isinstance(self.do_sample, bool):
            raise ConfigError(f"do_sample must be true or false; got {self.do_sample!r}")
        _check_positive("temperature", self.temperature)
        _check_positive("repetition_penalty", self.repetition_penalty, hint="1.0 = no penalty")
        if self.top_k is not None:
            _check_int("top_k", self.top_k, minimum=1, hint="or null for no top-k filtering")
        if self.top_p is not None and (not _is_number(self.top_p) or not 0.0 < self.top_p <= 1.0):
            raise ConfigError(f"top_p must be in (0, 1] (or null for no nucleus filtering); got {self.top_p!r}")
        if not _is_number(self.length_penalty):
            raise ConfigError(f"length_penalty must be a number (1.0 = score by mean log-prob); got {self.length_penalty!r}")
        if not (isinstance(self.early_stopping, bool) or self.early_stopping == "never"):
            raise ConfigError(f"early_stopping must be true, false or 'never'; got {self.early_stopping!r}")
        for token in self.eos_ids:
            _check_int("eos_token_id", token, minimum=0, hint="or a list of ids, or null")
        if self.pad_token_id is not None:
            _check_int("pad_token_id", self.pad_token_id, minimum=0)
        for text in self.stop_string_list:
            if not isinstance(text, str) or not text:
                raise ConfigError(f"stop_strings must be non-empty strings; got {text!r}")
        if self.seed is not None:
            _check_int("seed", self.seed, minimum=0)
        self._check_method()

    def _check_method(self) -> None:
        """Refuse options the chosen decoding method would ignore (see the module docstring)."""
        if self.do_sample and self.num_beams > 1:
            raise ConfigError(
                f"do_sample=true with num_beams={self.num_beams} (beam sampling) is not supported; "
                "set num_beams: 1 to sample, or do_sample: false for beam search"
            )
        if not self.do_sample:
            for name, unset in (("temperature", 1.0), ("top_k", None), ("top_p", None)):
                if getattr(self, name) != unset and not (name == "top_p" and self.top_p == 1.0):
                    raise ConfigError(
                        f"{name}={getattr(self, name)!r} only applies when sampling; "
                        f"set do_sample: true, or leave {name} at {unset!r} for greedy/beam search"
                    )
        if self.num_beams == 1:
            for name, unset in (("length_penalty", 1.0), ("early_stopping", False)):
                if getattr(self, name) != unset:
                    raise ConfigError(
                        f"{name}={getattr(self, name)!r} only applies to beam search; "
                        f"set num_beams above 1, or leave {name} at {unset!r}"
                    )

    # ---- derived ------------------------------------------------------------------------------------------

    @property
    def eos_ids(self) -> tuple[int, ...]:
        """The stop token ids as a tuple (empty when there are none)."""
        if self.eos_token_id is None:
            return ()
        if isinstance(self.eos_token_id, (list, tuple)):
            return tuple(self.eos_token_id)
        return (self.eos_token_id,)

    @property
    def stop_string_list(self) -> tuple[str, ...]:
        if self.stop_strings is None:
            return ()
        if isinstance(self.stop_strings, str):
            return (self.stop_strings,)
        return tuple(self.stop_strings)

    def replace(self, **changes: Any) -> GenerationConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_int(name: str, value, *, minimum: int, hint: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        kind = "a non-negative integer" if minimum == 0 else f"an integer >= {minimum}"
        raise ConfigError(f"{name} must be {kind}{' (' + hint + ')' if hint else ''}; got {value!r}")


def _check_positive(name: str, value, hint: str = "") -> None:
    if not _is_number(value) or not value > 0:
        raise ConfigError(f"{name} must be a number > 0{' (' + hint + ')' if hint else ''}; got {value!r}")
