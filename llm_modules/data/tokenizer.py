"""A SentencePiece tokenizer with the LLaMA choices and the special tokens every objective needs.

Why SentencePiece: one self-contained model file (a serialized protobuf) that trains in seconds,
encodes in C++, and can be stored inside a checkpoint as bytes. The defaults follow LLaMA:
split digits into single tokens (numbers generalise better), fall back to UTF-8 bytes for rare
characters (no ``<unk>`` on real text), and apply no normalization, so that
``decode(encode(text)) == text`` for source code with its tabs, runs of spaces and non-ASCII.

Special tokens sit at fixed ids at the start of the vocabulary, so two tokenizers trained with the
same settings agree on them and collators can rely on them::

    0 <pad>   1 <unk>   2 <s> (bos)   3 </s> (eos)   4 <mask>   5.. <extra_id_0>, <extra_id_1>, ...

``<mask>`` (BERT) and the sentinels (T5 span corruption) are *control* symbols: text that happens to
contain the string ``"<mask>"`` never encodes to them, so a corpus cannot forge them.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import sentencepiece as spm

from llm_modules.atomic_files import write_bytes
from llm_modules.data.text_reading import document_lines, read_parts
from llm_modules.registry import ConfigError

PAD, UNK, BOS, EOS, MASK = "<pad>", "<unk>", "<s>", "</s>", "<mask>"
SENTINEL = "<extra_id_{}>"
NORMALIZATIONS = ("identity", "nmt_nfkc", "nfkc", "nmt_nfkc_cf", "nfkc_cf")
MODEL_TYPES = ("bpe", "unigram")

# SentencePiece skips training sentences longer than ``max_sentence_length`` bytes; we cut long lines
# into chunks of this many characters (at most 4 bytes each) so nothing is silently dropped.
_CHUNK_CHARS = 4096
_MAX_SENTENCE_BYTES = 4 * _CHUNK_CHARS
# Characters of the training sample: SentencePiece's trainer takes ~5 bytes per character it is given,
# and max_sentences chunks of 4096 characters (a corpus of very long lines) would be 400M characters.
_MAX_SAMPLE_CHARS = 1 << 25


class Tokenizer:
    """Wraps a ``SentencePieceProcessor``; build with :meth:`train`, :meth:`load` or :meth:`from_bytes`."""

    def __init__(self, processor: spm.SentencePieceProcessor, source: str | None = None):
        self.sp = processor
        self.source = source  # where it came from, for messages only
        self._proto = processor.serialized_model_proto()
        self.mask_id = self._control_id(MASK)
        self.sentinel_ids: list[int] = []
        while (sid := self._control_id(SENTINEL.format(len(self.sentinel_ids)))) is not None:
            self.sentinel_ids.append(sid)
        self._special = {i for i in range(self.vocab_size) if processor.is_control(i) or processor.is_unknown(i)}
        self.lines_encode_independently = self._lines_encode_independently()
        self.spaces_encode_independently = self.lines_encode_independently and self._spaces_encode_independently()

    # ---- construction -----------------------------------------------------------------------------------

    @classmethod
    def train(
        cls,
        inputs: str | os.PathLike | Sequence[str | os.PathLike] | Iterable[str],
        out_path: str | os.PathLike | None = None,
        *,
        vocab_size: int = 8192,
        model_type: str = "bpe",
        num_sentinels: int = 100,
        split_digits: bool = True,
        byte_fallback: bool = True,
        normalization: str = "identity",
        add_dummy_prefix: bool = False,
        character_coverage: float = 0.9995,
        max_sentences: int = 100_000,
        seed: int = 0,
        num_threads: int | None = None,
        field: str = "vocab_size",
        inputs_field: str = "inputs",
        **options,
    ) -> Tokenizer:
        """Train a tokenizer and, when ``out_path`` is given, save it there (``.model`` is appended if absent).

        ``inputs``: a path or a list/tuple of paths to UTF-8 text files, or any other iterable of
        strings (documents or lines; pass ``iter(texts)`` for a list of texts). Documents are
        cut into lines (SentencePiece learns within a line anyway) and, when there are more than
        ``max_sentences`` of them, a seeded random sample is kept: training cost grows with the
        sample, not with the corpus, and the same inputs and seed give the same tokenizer. The sample
        also holds at most 32M characters (a corpus of very long lines reaches it before
        ``max_sentences``), so memory stays bounded however long the lines are.

        ``field`` and ``inputs_field`` name the config keys that hold ``vocab_size`` and the inputs, so
        errors point at them.
        Extra ``options`` go to ``SentencePieceTrainer`` unchanged (e.g. ``max_sentencepiece_length=8``).
        """
        if model_type not in MODEL_TYPES:
            raise ConfigError(f"tokenizer model_type {model_type!r} is not supported; choices: {', '.join(MODEL_TYPES)}")
        if normalization not in NORMALIZATIONS:
            raise ConfigError(
                f"tokenizer normalization {normalization!r} is not supported; choices: {', '.join(NORMALIZATIONS)}"
            )
        specials = 5 + num_sentinels
        floor = specials + (256 if byte_fallback else 0) + 1
        if vocab_size < floor:
            raise ConfigError(
                f"{field}={vocab_size} is too small: the special tokens take {specials} ids"
                + (" and byte fallback 256 more" if byte_fallback else "")
                + f"; use at least {floor + 100} (or fewer sentinels)"
            )
        sentences = _sample_lines(_texts(inputs), max_sentences, seed)
        if not sentences:
            raise ConfigError(
                f"{inputs_field}: no text to train a tokenizer on (the inputs are empty or whitespace only); "
                "give files that hold text"
            )
        model = io.BytesIO()
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=iter(sentences),
                model_writer=model,
                vocab_size=vocab_size,
                model_type=model_type,
                split_digits=split_digits,
                byte_fallback=byte_fallback,
                normalization_rule_name=normalization,
                add_dummy_prefix=add_dummy_prefix,
                remove_extra_whitespaces=False,  # indentation is meaning in code
                allow_whitespace_only_pieces=True,  # lets a run of indentation be one token
                split_by_whitespace=True,
                character_coverage=character_coverage,
                pad_id=0, unk_id=1, bos_id=2, eos_id=3,
                pad_piece=PAD, unk_piece=UNK, bos_piece=BOS, eos_piece=EOS,
                control_symbols=[MASK] + [SENTINEL.format(i) for i in range(num_sentinels)],
                input_sentence_size=0,  # we sampled already
                max_sentence_length=_MAX_SENTENCE_BYTES,
                num_threads=num_threads or os.cpu_count() or 1,
                minloglevel=2,
                **options,
            )
        except RuntimeError as err:  # SentencePiece reports a bad vocab size this way
            raise _vocab_error(str(err), field, vocab_size) from err
        tok = cls.from_bytes(model.getvalue())
        if out_path is not None:
            out = Path(out_path)
            tok.save(out if out.suffix == ".model" else out.with_name(out.name + ".model"))
        return tok

    @classmethod
    def load(cls, path: str | os.PathLike, field: str = "tokenizer") -> Tokenizer:
        """Load a SentencePiece ``.model`` file (ours or any other, e.g. LLaMA's)."""
        p = Path(path).expanduser()
        if not p.is_file():
            raise ConfigError(f"{field}: {str(path)!r} does not exist; give the path to a SentencePiece .model file")
        try:
            tok = cls.from_bytes(p.read_bytes())
        except ConfigError as err:
            raise ConfigError(f"{field}: {str(path)!r} {err}") from None
        tok.source = str(p)
        return tok

    @classmethod
    def from_bytes(cls, data: bytes) -> Tokenizer:
        """Rebuild from :meth:`to_bytes` output (how the tokenizer travels inside a checkpoint)."""
        sp = spm.SentencePieceProcessor()
        try:
            sp.LoadFromSerializedProto(bytes(data))
        except (RuntimeError, OSError, TypeError) as err:
            raise ConfigError(f"is not a SentencePiece model ({err})") from err
        return cls(sp)

    def to_bytes(self) -> bytes:
        """The serialized model proto: everything needed to rebuild this tokenizer, no file needed."""
        return self._proto

    def save(self, path: str | os.PathLike) -> Path:
        """Write the ``.model`` file atomically (temp file + rename), so a crash never leaves half a model."""
        path = Path(path).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes(path, self._proto)  # mode 0644 under umask 022, like any new file
        return path

    # ---- identity -----------------------------------------------------------------------------------------

    @property
    def fingerprint(self) -> str:
        """sha256 of the model bytes: the cache key for anything derived from this tokenizer."""
        return hashlib.sha256(self._proto).hexdigest()

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    @property
    def pad_id(self) -> int:
        return self.sp.pad_id()

    @property
    def unk_id(self) -> int:
        return self.sp.unk_id()

    @property
    def bos_id(self) -> int:
        return self.sp.bos_id()

    @property
    def eos_id(self) -> int:
        return self.sp.eos_id()

    @property
    def special_ids(self) -> set[int]:
        """Ids of control and unknown pieces (pad, unk, bos, eos, mask, sentinels)."""
        return set(self._special)

    # ---- encode / decode ------------------------------------------------------------------------------------

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        return self.sp.encode(text, add_bos=bos, add_eos=eos)

    def encode_batch(self, texts: Sequence[str], bos: bool = False, eos: bool = False) -> list[list[int]]:
        return self.sp.encode(list(texts), add_bos=bos, add_eos=eos)

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        """Text for ``ids``; with ``skip_special=False`` control tokens show as their pieces (``<extra_id_0>``)."""
        ids = [int(i) for i in ids]
        if skip_special:
            return self.sp.decode(ids)
        out, run = [], []
        for i in ids:
            if i in self._special:
                if run:
                    out.append(self.sp.decode(run))
                    run = []
                out.append(self.sp.id_to_piece(i))
            else:
                run.append(i)
        if run:
            out.append(self.sp.decode(run))
        return "".join(out)

    def id_to_piece(self, i: int) -> str:
        return self.sp.id_to_piece(int(i))

    def piece_to_id(self, piece: str) -> int:
        return self.sp.piece_to_id(piece)

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, source={self.source!r}, fingerprint={self.fingerprint[:12]})"

    # SentencePieceProcessor does not pickle; DataLoader workers and collators may need to.
    def __getstate__(self):
        return {"proto": self._proto, "source": self.source}

    def __setstate__(self, state):
        sp = spm.SentencePieceProcessor()
        sp.LoadFromSerializedProto(state["proto"])
        self.__init__(sp, state["source"])

    # ---- helpers ------------------------------------------------------------------------------------------

    def _control_id(self, piece: str) -> int | None:
        i = self.sp.piece_to_id(piece)
        return i if self.sp.id_to_piece(i) == piece and i != self.sp.unk_id() else None

    def _lines_encode_independently(self) -> bool:
        """Whether encoding a text line by line gives the same ids as encoding it whole.

        True for our tokenizers (no piece spans a newline, no dummy prefix, no whitespace folding);
        it lets the token cache encode short lines, which is several times faster than whole files.
        A tokenizer from elsewhere that fails the check is simply encoded whole.
        """
        if any("\n" in self.sp.id_to_piece(i) for i in range(self.vocab_size)):
            return False
        for probe in ("x", "  x  y", "\tx", " 12"):
            if self.sp.encode("a\n" + probe) != self.sp.encode("a\n") + self.sp.encode(probe):
                return False
        return True

    def _spaces_encode_independently(self) -> bool:
        """Whether a line cut just before a space that follows a non-space character encodes to the ids of
        the whole line (``text_reading.document_lines`` cuts very long lines there).

        True when no piece holds a space (``▁``) after another character: then no piece can span
        the cut, BPE merges and unigram's best segmentation stay on either side of it, and the ids of
        the two sides concatenate to the ids of the whole. Ours: pieces are split at whitespace.
        """
        for i in range(self.vocab_size):
            if not (self.sp.is_control(i) or self.sp.is_unknown(i) or self.sp.is_byte(i)) \
                    and _SPACE_AFTER_CHAR.search(self.sp.id_to_piece(i)):
                return False
        for left, right in (("ab", " cd"), ("x", "  y"), ("12", " 34"), ("a.", " b")):
            if self.sp.encode(left + right) != self.sp.encode(left) + self.sp.encode(right):
                return False
        return True


_SPACE_AFTER_CHAR = re.compile("[^\u2581]\u2581")  # a piece holding a space after another character


def _vocab_error(msg: str, field: str, vocab_size: int) -> Exception:
    """Turn SentencePiece's vocabulary-size complaints into a message that names the field and the bound."""
    small = re.search(r"smaller than required_chars\. (\d+) vs (\d+)", msg)
    if small:
        return ConfigError(
            f"{field}={vocab_size} is too small for this corpus: its characters and the special tokens "
            f"need at least {small.group(2)} ids; raise {field}"
        )
    large = re.search(r"too high \((\d+)\).*?<= (\d+)", msg)
    if large:
        return ConfigError(
            f"{field}={vocab_size} is too large for this corpus: at most {large.group(2)} pieces can be "
            f"learned from it; lower {field} or train on more text"
        )
    return ConfigError(f"tokenizer training failed: {msg.strip()}")


def _texts(inputs) -> Iterator[str]:
    """Texts from file paths (a path, or a list/tuple of them: their lines, read a part at a time so
    a huge file or line is never held whole) or from an iterable of strings."""
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    if isinstance(inputs, (list, tuple)):
        for p in inputs:
            path = Path(p).expanduser()
            if not path.is_file():
                raise ConfigError(f"tokenizer training file {str(p)!r} does not exist")
            yield from document_lines(read_parts(path))
    else:
        yield from inputs


def _sample_lines(texts: Iterable[str], limit: int, seed: int, max_chars: int = _MAX_SAMPLE_CHARS) -> list[str]:
    """Non-blank lines (long ones cut into chunks), reservoir-sampled down to ``limit`` with ``seed``.

    When the sample outgrows ``max_chars`` characters, random members are dropped until it holds at
    most 7/8 of that and the reservoir continues at the smaller size: dropping a random subset of a
    uniform sample leaves a uniform sample, so every line stays equally likely to be kept. A sample
    that never reaches ``max_chars`` is exactly the plain reservoir sample.
    """
    rng = random.Random(seed)
    kept: list[str] = []
    seen = chars = 0
    for text in texts:
        for line in text.split("\n"):
            if not line.strip():
                continue
            for start in range(0, len(line), _CHUNK_CHARS):
                chunk = line[start:start + _CHUNK_CHARS]
                seen += 1
                if len(kept) < limit:
                    kept.append(chunk)
                    chars += len(chunk)
                else:
                    j = rng.randrange(seen)
                    if j < limit:
                        chars += len(chunk) - len(kept[j])
                        kept[j] = chunk
                if chars > max_chars:
                    while chars > max_chars * 7 // 8 and len(kept) > 1:
                        i = rng.randrange(len(kept))
                        chars -= len(kept[i])
                        kept[i] = kept[-1]
                        kept.pop()
                    limit = len(kept)
    return kept
