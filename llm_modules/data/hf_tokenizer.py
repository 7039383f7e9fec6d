"""Tokenizers for inference from files other than our own: a Hugging Face ``tokenizer.json``, and the
choice of tokenizer file for a path or a model folder.

Imported models come with a SentencePiece ``tokenizer.model`` (LLaMA, T5), which ``Tokenizer``
reads, or only a ``tokenizer.json`` (GPT-2, BLOOM, BERT and most newer models), which the
``tokenizers`` package reads. That package is optional (transformers installs it) and imported only
here, when such a file is used: training always tokenizes with SentencePiece, so only generation
needs this. ``HFTokenizer`` offers the part of ``Tokenizer``'s interface that generation uses.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from llm_modules.registry import ConfigError


class HFTokenizer:
    """A ``tokenizers.Tokenizer`` with ``Tokenizer``'s inference interface (encode, decode, special ids).

    Special tokens come from ``tokenizer_config.json`` / ``special_tokens_map.json`` beside the file
    (``tokenizer.json`` itself does not say which added token is BOS or EOS); a missing one is -1
    (``mask_id``: None), as in ``Tokenizer``.
    """

    def __init__(self, tokenizer, specials: dict[str, str] | None = None, source: str | None = None):
        self.tk = tokenizer
        self.source = source
        specials = specials or {}
        self.bos_id, self.eos_id, self.pad_id, self.unk_id = (
            self._id(specials.get(name)) for name in ("bos_token", "eos_token", "pad_token", "unk_token"))
        self.mask_token = specials.get("mask_token") or next(
            (t for t in ("[MASK]", "<mask>") if tokenizer.token_to_id(t) is not None), None)
        mask = self._id(self.mask_token)
        self.mask_id = mask if mask >= 0 else None

    @classmethod
    def load(cls, path: str | os.PathLike, field: str = "tokenizer") -> HFTokenizer:
        """Read a ``tokenizer.json`` (and the special tokens named in the files beside it)."""
        p = Path(path).expanduser()
        try:
            from tokenizers import Tokenizer as Backend
        except ImportError:
            raise ConfigError(f"{field}: {str(path)!r} is a Hugging Face tokenizer.json, which needs the "
                              "'tokenizers' package (pip install tokenizers); or pass a SentencePiece .model") from None
        try:
            backend = Backend.from_file(str(p))
        except Exception as err:  # the Rust side raises plain Exception
            raise ConfigError(f"{field}: {str(path)!r} is not a Hugging Face tokenizer.json ({err})") from None
        return cls(backend, _special_tokens(p.parent), source=str(p))

    @property
    def vocab_size(self) -> int:
        return self.tk.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        """The text's ids alone; ``bos`` / ``eos`` add those tokens where the tokenizer has them."""
        ids = self.tk.encode(text, add_special_tokens=False).ids
        return ([self.bos_id] if bos and self.bos_id >= 0 else []) + ids + ([self.eos_id] if eos and self.eos_id >= 0 else [])

    def encode_prompt(self, text: str) -> list[int]:
        """Ids as transformers encodes a model's input: with the special tokens the tokenizer's own
        post-processor adds (BOS for LLaMA, [CLS] ... [SEP] for BERT, none for GPT-2)."""
        return self.tk.encode(text, add_special_tokens=True).ids

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        return self.tk.decode([int(i) for i in ids], skip_special_tokens=skip_special)

    def id_to_piece(self, i: int) -> str:
        return self.tk.id_to_token(int(i)) or ""

    def piece_to_id(self, piece: str) -> int:
        found = self.tk.token_to_id(piece)
        return -1 if found is None else found

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        return f"HFTokenizer(vocab_size={self.vocab_size}, source={self.source!r})"

    def _id(self, token: str | None) -> int:
        return self.piece_to_id(token) if token else -1


def _special_tokens(folder: Path) -> dict[str, str]:
    """``bos_token`` etc. from ``special_tokens_map.json`` and ``tokenizer_config.json`` (the latter
    wins); values there are a string or ``{"content": ...}``."""
    found: dict[str, str] = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        try:
            data = json.loads((folder / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        for key in ("bos_token", "eos_token", "pad_token", "unk_token", "mask_token"):
            value = data.get(key) if isinstance(data, dict) else None
            value = value.get("content") if isinstance(value, dict) else value
            if isinstance(value, str) and value:
                found[key] = value
    return found


def load_tokenizer(path: str | os.PathLike, field: str = "tokenizer"):
    """A tokenizer from a SentencePiece ``.model``, a ``tokenizer.json``, or a folder holding either
    (``tokenizer.model`` preferred: it is what ``Tokenizer`` and training use)."""
    from llm_modules.data.tokenizer import Tokenizer

    p = Path(path).expanduser()
    if p.is_dir():
        found = folder_tokenizer(p)
        if found is None:
            raise ConfigError(f"{field}: the folder {str(path)!r} holds neither tokenizer.model nor tokenizer.json")
        return found
    if p.suffix == ".json":
        if not p.is_file():
            raise ConfigError(f"{field}: {str(path)!r} does not exist; give a SentencePiece .model or a tokenizer.json")
        return HFTokenizer.load(p, field)
    return Tokenizer.load(p, field)


def folder_tokenizer(folder: str | os.PathLike, field: str = "tokenizer"):
    """The tokenizer of a model folder (``tokenizer.model``, else ``tokenizer.json``), or None."""
    from llm_modules.data.tokenizer import Tokenizer

    folder = Path(folder)
    if (folder / "tokenizer.model").is_file():
        return Tokenizer.load(folder / "tokenizer.model", field)
    if (folder / "tokenizer.json").is_file():
        return HFTokenizer.load(folder / "tokenizer.json", field)
    return None
