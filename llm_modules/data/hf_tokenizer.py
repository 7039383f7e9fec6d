"""Tokenizers from files other than our own: a Hugging Face ``tokenizer.json`` with the files beside it,
and the choice of tokenizer file for a path, a model folder or a checkpoint's bytes.

Imported models come with a SentencePiece ``tokenizer.model`` (LLaMA 2, T5), which ``Tokenizer``
reads, or a fast tokenizer's ``tokenizer.json`` (Llama 3, Qwen, Gemma, GPT-2, BERT and most newer
models), which the ``tokenizers`` package reads. That package is optional (``pip install
llm-modules[hf]``; transformers installs it too) and imported only here, when such a file is used:
a model trained here tokenizes with SentencePiece and never needs it.

``HFTokenizer`` offers ``Tokenizer``'s interface (encode, decode, special ids, ``to_bytes``,
``fingerprint``), so it can be the tokenizer of a training run as well as of generation. What a
model folder says about its tokenizer beyond ``tokenizer.json`` travels with it: the whole
``tokenizer_config.json`` (special tokens, added tokens, ``chat_template``) and the folder's
``generation_config.json`` (the EOS ids generation stops at, a list for Llama 3). ``to_bytes`` packs
the three into one JSON document (a *bundle*), which checkpoints keep where they keep a
SentencePiece model's bytes, and ``tokenizer_from_bytes`` tells the two apart.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from llm_modules.registry import ConfigError

#: the ``format`` of a bundle (``HFTokenizer.to_bytes``); a SentencePiece model proto never starts with "{"
BUNDLE_FORMAT = "llm-modules/hf-tokenizer"
SPECIAL_NAMES = ("bos_token", "eos_token", "pad_token", "unk_token", "mask_token")


class HFTokenizer:
    """A ``tokenizers.Tokenizer`` with ``Tokenizer``'s interface.

    Special tokens come from ``tokenizer_config.json`` / ``special_tokens_map.json`` beside the file
    (``tokenizer.json`` itself does not say which added token is BOS or EOS); a missing one is -1
    (``mask_id``: None), as in ``Tokenizer``, except ``pad_id``: batches need one, and without a pad
    token (Llama 3) it is the EOS id (padded positions are masked out of attention and loss).
    ``config``: the folder's ``tokenizer_config.json`` (with ``chat_template``); ``generation``: its
    ``generation_config.json`` (or None). Both are read-only: ``to_bytes`` and ``files`` write them out.
    """

    #: a tokenizer from elsewhere may merge across a newline or a space: the token cache encodes whole documents
    lines_encode_independently = False
    spaces_encode_independently = False
    sentinel_ids: list[int] = []
    #: Hugging Face models often pad the embedding table past the tokenizer (Qwen: 151,936 rows for
    #: 151,665 tokens), so a model may have more rows than this tokenizer has ids (never fewer)
    fits_padded_table = True

    def __init__(self, tokenizer, specials: dict[str, str] | None = None, source: str | None = None,
                 config: dict[str, Any] | None = None, generation: dict[str, Any] | None = None,
                 text: str | None = None):
        self.tk = tokenizer
        self.source = source
        self.config = dict(config or {})
        self.generation = dict(generation) if generation else None
        self._text = text if text is not None else tokenizer.to_str()
        specials = {**_specials_of(self.config), **(specials or {})}
        self.bos_id, self.eos_id, self.pad_id, self.unk_id = (
            self._id(specials.get(name)) for name in ("bos_token", "eos_token", "pad_token", "unk_token"))
        self.mask_token = specials.get("mask_token") or next(
            (t for t in ("[MASK]", "<mask>") if tokenizer.token_to_id(t) is not None), None)
        mask = self._id(self.mask_token)
        self.mask_id = mask if mask >= 0 else None
        self.special_tokens = specials
        if self.pad_id < 0:  # Llama 3 has none; padding is masked out, so EOS serves (as transformers users set it)
            self.pad_id = max(self.eos_id, 0)

    # ---- construction -----------------------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | os.PathLike, field: str = "tokenizer") -> HFTokenizer:
        """Read a ``tokenizer.json`` and the files beside it (module docstring)."""
        p = Path(path).expanduser()
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"{field}: cannot read {str(path)!r} ({err})") from None
        folder = p.parent
        config = _read_json(folder / "tokenizer_config.json", field) or {}
        template = folder / "chat_template.jinja"  # newer transformers save the template beside the config
        if "chat_template" not in config and template.is_file():
            config["chat_template"] = template.read_text(encoding="utf-8")
        generation = _read_json(folder / "generation_config.json", field)
        specials = _specials_of(_read_json(folder / "special_tokens_map.json", field) or {})
        return cls(_backend(text, str(path), field), specials, source=str(p), config=config,
                   generation=generation, text=text)

    @classmethod
    def from_bytes(cls, data: bytes, field: str = "tokenizer") -> HFTokenizer:
        """Rebuild from ``to_bytes`` output (how the tokenizer travels inside a checkpoint)."""
        try:
            bundle = json.loads(bytes(data).decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as err:
            raise ConfigError(f"{field}: not a tokenizer bundle ({err})") from None
        if not isinstance(bundle, dict) or bundle.get("format") != BUNDLE_FORMAT \
                or not isinstance(bundle.get("tokenizer.json"), str):
            raise ConfigError(f"{field}: not a tokenizer bundle (format {BUNDLE_FORMAT!r} with its tokenizer.json "
                              "expected); the checkpoint is damaged or was written by another program")
        text = bundle["tokenizer.json"]
        return cls(_backend(text, "the checkpoint's tokenizer", field), bundle.get("special_tokens") or {},
                   config=bundle.get("tokenizer_config.json"), generation=bundle.get("generation_config.json"),
                   text=text)

    def to_bytes(self) -> bytes:
        """One JSON document with ``tokenizer.json``, ``tokenizer_config.json`` and ``generation_config.json``."""
        bundle = {"format": BUNDLE_FORMAT, "tokenizer.json": self._text, "tokenizer_config.json": self.config,
                  "generation_config.json": self.generation, "special_tokens": self.special_tokens}
        return json.dumps(bundle, sort_keys=True, ensure_ascii=False).encode("utf-8")

    def files(self) -> dict[str, bytes]:
        """``tokenizer.json`` and ``tokenizer_config.json`` as a Hugging Face folder holds them (the
        special tokens written into the config, so ``AutoTokenizer`` finds them there)."""
        config = dict(self.config)
        for name, token in self.special_tokens.items():
            config.setdefault(name, token)
        config.setdefault("tokenizer_class", "PreTrainedTokenizerFast")
        return {"tokenizer.json": self._text.encode("utf-8"),
                "tokenizer_config.json": (json.dumps(config, indent=2, ensure_ascii=False) + "\n").encode("utf-8")}

    # ---- identity ---------------------------------------------------------------------------------------

    @property
    def fingerprint(self) -> str:
        """sha256 of the bundle: the cache key for anything derived from this tokenizer."""
        return hashlib.sha256(self.to_bytes()).hexdigest()

    @property
    def vocab_size(self) -> int:
        return self.tk.get_vocab_size(with_added_tokens=True)

    @property
    def special_ids(self) -> set[int]:
        """Ids of the added tokens marked special, and of bos/eos/pad/unk/mask."""
        ids = {i for i, token in self.tk.get_added_tokens_decoder().items() if token.special}
        ids |= {i for i in (self.bos_id, self.eos_id, self.pad_id, self.unk_id, self.mask_id)
                if i is not None and i >= 0}
        return ids

    @property
    def chat_template(self) -> str | None:
        """The model's chat template (Jinja), or None; a list of named templates gives its ``default``."""
        template = self.config.get("chat_template")
        if isinstance(template, list):
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default")
        return template if isinstance(template, str) and template else None

    # ---- encode / decode --------------------------------------------------------------------------------

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        """The text's ids alone; ``bos`` / ``eos`` add those tokens where the tokenizer has them."""
        if bos or eos:
            return self.encode_batch([text], bos, eos)[0]
        return self.tk.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str], bos: bool = False, eos: bool = False) -> list[list[int]]:
        rows = [e.ids for e in self.tk.encode_batch(list(texts), add_special_tokens=False)]
        head = [self.bos_id] if bos and self.bos_id >= 0 else []
        tail = [self.eos_id] if eos and self.eos_id >= 0 else []
        return [head + r + tail for r in rows]

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

    # tokenizers.Tokenizer pickles, but the bundle is the smaller, exact description
    def __getstate__(self):
        return {"bundle": self.to_bytes(), "source": self.source}

    def __setstate__(self, state):
        other = HFTokenizer.from_bytes(state["bundle"])
        self.__dict__.update(other.__dict__)
        self.source = state["source"]

    def _id(self, token: str | None) -> int:
        return self.piece_to_id(token) if token else -1


def _backend(text: str, where: str, field: str):
    try:
        from tokenizers import Tokenizer as Backend
    except ImportError:
        raise ConfigError(f"{field}: {where} is a Hugging Face tokenizer.json, which needs the 'tokenizers' "
                          "package (pip install 'llm-modules[hf]'); or pass a SentencePiece .model") from None
    try:
        return Backend.from_str(text)
    except Exception as err:  # the Rust side raises plain Exception
        raise ConfigError(f"{field}: {where!r} is not a Hugging Face tokenizer.json ({err})") from None


def _read_json(path: Path, field: str) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ConfigError(f"{field}: {str(path)!r} is not readable JSON ({err}); fix or remove it") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{field}: {str(path)!r} must hold a JSON object")
    return data


def _specials_of(data: dict[str, Any]) -> dict[str, str]:
    """``bos_token`` etc. of a ``tokenizer_config.json`` / ``special_tokens_map.json``: a string or
    ``{"content": ...}`` each."""
    found: dict[str, str] = {}
    for key in SPECIAL_NAMES:
        value = data.get(key)
        value = value.get("content") if isinstance(value, dict) else value
        if isinstance(value, str) and value:
            found[key] = value
    return found


def tokenizer_from_bytes(data: bytes, field: str = "tokenizer"):
    """The tokenizer a checkpoint keeps as bytes: a bundle (``HFTokenizer.to_bytes``) or a SentencePiece model."""
    from llm_modules.data.tokenizer import Tokenizer

    data = bytes(data)
    if data[:1] == b"{":
        return HFTokenizer.from_bytes(data, field)
    return Tokenizer.from_bytes(data)


def load_tokenizer(path: str | os.PathLike, field: str = "tokenizer"):
    """A tokenizer from a SentencePiece ``.model``, a ``tokenizer.json``, a bundle file (a checkpoint's
    tokenizer written out), or a folder holding any of them (``folder_tokenizer``)."""
    from llm_modules.data.tokenizer import Tokenizer

    p = Path(path).expanduser()
    if p.is_dir():
        found = folder_tokenizer(p, field)
        if found is None:
            raise ConfigError(f"{field}: the folder {str(path)!r} holds neither tokenizer.model nor tokenizer.json")
        return found
    if p.suffix == ".json":
        if not p.is_file():
            raise ConfigError(f"{field}: {str(path)!r} does not exist; give a SentencePiece .model or a tokenizer.json")
        return HFTokenizer.load(p, field)
    if p.is_file() and p.read_bytes()[:1] == b"{":
        tok = HFTokenizer.from_bytes(p.read_bytes(), field)
        tok.source = str(p)
        return tok
    return Tokenizer.load(p, field)


def folder_tokenizer_bytes(folder: str | os.PathLike, field: str = "tokenizer") -> bytes | None:
    """The tokenizer of a Hugging Face model folder as a checkpoint keeps it (None without one):
    ``tokenizer.json`` with its ``tokenizer_config.json``, chat template and ``generation_config.json``
    (``HFTokenizer.to_bytes``) when the folder has one, as transformers' AutoTokenizer prefers it too;
    else the SentencePiece ``tokenizer.model``."""
    found = folder_tokenizer(folder, field, prefer="tokenizer.json")
    return None if found is None else found.to_bytes()


def folder_tokenizer(folder: str | os.PathLike, field: str = "tokenizer", prefer: str = "tokenizer.model"):
    """The tokenizer of a model folder, or None: ``prefer`` (``tokenizer.model`` or ``tokenizer.json``)
    when the folder has both, else whichever it has."""
    from llm_modules.data.tokenizer import Tokenizer

    folder = Path(folder)
    order = ("tokenizer.model", "tokenizer.json")
    for name in (order if prefer == "tokenizer.model" else order[::-1]):
        if (folder / name).is_file():
            return (Tokenizer.load if name == "tokenizer.model" else HFTokenizer.load)(folder / name, field)
    return None
