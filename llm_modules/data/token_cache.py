"""Tokenize once, reuse on every rerun: a flat token file plus a small index, keyed by what made it.

Layout of one cache entry, ``<cache_dir>/tokens/<key>/``:

- ``tokens.bin``: every document's ids back to back (uint16 when the vocabulary fits, else uint32),
  read through ``numpy.memmap`` so a corpus larger than memory costs nothing to open;
- ``documents.npy``: an (n_docs, 2) int64 array of [token offset, UTF-8 byte count]; the byte
  counts turn a loss in nats per token into bits per byte;
- ``index.json``: format version, key, tokenizer fingerprint, per-file sizes/mtimes, counts, and the
  documents' ``source_id`` list (the split is decided from those ids).

The key is a sha256 over the tokenizer fingerprint, every input file's id, path, size and mtime, and
the settings that change what is read (``text_field``). Changing any of them gives a new key, so a
stale cache is never read; the split, seq_len and shuffling are *not* in the key, because they are
applied when the cache is read, not when it is written.

An entry is built in a temporary folder next to its final place and renamed into place when complete,
so a crash or a bad input never leaves a half-written entry, and never touches an existing one.

Speed: SentencePiece encodes in C++; we hand it lines (when the tokenizer allows, see
``Tokenizer.lines_encode_independently``), which is several times faster than whole files. Its
own threads gain little on 2 cores, and a process pool would mostly copy strings, so there is none:
the whole standard library (~12 MB) takes a few seconds.

Memory: files are read in parts and very long lines cut into pieces (``text_reading.document_lines``),
so a file that is one 200 MB line costs what a batch of ``_BATCH_CHARS`` characters costs, where
encoding it whole cost ~46 bytes per byte of the line (``benchmarks/long_line.py``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from llm_modules.data.sources import SourceFile
from llm_modules.data.text_reading import document_lines
from llm_modules.data.tokenizer import Tokenizer
from llm_modules.registry import ConfigError

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
_BATCH_CHARS = 4_000_000  # text handed to SentencePiece per call: bounds memory, keeps calls large


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)


def cache_key(files: Sequence[SourceFile], tokenizer: Tokenizer, settings: dict | None = None) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"format": FORMAT_VERSION, "tokenizer": tokenizer.fingerprint,
                         "settings": settings or {}}, sort_keys=True, default=str).encode())
    for f in files:
        size, mtime = f.stat()
        h.update(json.dumps([f.source_id, str(f.path), f.kind, f.text_field, size, mtime]).encode())
    return h.hexdigest()[:32]


@dataclass
class TokenCache:
    """A built cache entry: tokens of every document plus their ids and byte counts."""

    directory: Path
    tokens: np.ndarray  # flat memmap
    offsets: np.ndarray  # (n_docs + 1,) token offsets
    doc_bytes: np.ndarray  # (n_docs,) UTF-8 bytes of each document's text
    source_ids: list[str]
    meta: dict
    created: bool = field(default=False)  # True when this call tokenized (False: reused from disk)

    @property
    def key(self) -> str:
        return self.meta["key"]

    @property
    def num_documents(self) -> int:
        return len(self.source_ids)

    @property
    def num_tokens(self) -> int:
        return int(self.offsets[-1])

    @property
    def num_bytes(self) -> int:
        return int(self.doc_bytes.sum())

    @property
    def doc_lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def token_path(self) -> Path:
        return self.directory / "tokens.bin"

    def document(self, i: int) -> np.ndarray:
        return self.tokens[self.offsets[i]:self.offsets[i + 1]]


def build_token_cache(
    files: Sequence[SourceFile],
    tokenizer: Tokenizer,
    cache_dir: str | os.PathLike,
    *,
    settings: dict | None = None,
    field: str = "data.paths",
) -> TokenCache:
    """Return the cache entry for ``files`` under ``tokenizer``, tokenizing only when none exists yet."""
    root = Path(cache_dir).expanduser() / "tokens"
    key = cache_key(files, tokenizer, settings)
    final = root / key
    cached = open_token_cache(final)
    if cached is not None:
        log.info("token cache: reusing %s (%d documents, %d tokens)", final, cached.num_documents, cached.num_tokens)
        return cached
    root.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(root)
    tmp = root / f".{key}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        _write(tmp, files, tokenizer, key, field)
        try:
            os.rename(tmp, final)
        except OSError:
            # Someone else (another rank, a parallel run) finished the same key first: theirs is as good.
            if open_token_cache(final) is None:
                if final.exists():  # an invalid leftover under the final name: replace it
                    shutil.rmtree(final, ignore_errors=True)
                os.rename(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    built = open_token_cache(final)
    assert built is not None, f"token cache at {final} did not validate right after writing"
    built.created = True
    return built


def _remove_stale_temps(root: Path, min_age_s: float = 600.0) -> None:
    """Delete temp folders left by killed runs: their process is gone and they are not fresh.

    The age check keeps a folder that another machine sharing this cache is still writing
    (its pid means nothing here) unless it has been idle for ``min_age_s``.
    """
    now = time.time()
    for tmp in root.glob(".*.tmp-*"):
        try:
            pid = int(tmp.name.rsplit(".tmp-", 1)[1].split("-")[0])
            if now - tmp.stat().st_mtime < min_age_s or _alive(pid):
                continue
        except (ValueError, IndexError, OSError):
            continue
        shutil.rmtree(tmp, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def open_token_cache(directory: str | os.PathLike) -> TokenCache | None:
    """Open a complete cache entry, or None if it is missing or fails the size checks."""
    d = Path(directory)
    try:
        meta = json.loads((d / "index.json").read_text())
        if meta.get("format") != FORMAT_VERSION:
            return None
        dtype = np.dtype(meta["dtype"])
        n_tokens = int(meta["num_tokens"])
        if (d / "tokens.bin").stat().st_size != n_tokens * dtype.itemsize:
            return None
        docs = np.load(d / "documents.npy")
        if docs.shape != (len(meta["source_ids"]), 2):
            return None
    except (OSError, ValueError, KeyError):
        return None
    offsets = np.append(docs[:, 0], n_tokens).astype(np.int64)
    tokens = (np.memmap(d / "tokens.bin", dtype=dtype, mode="r", shape=(n_tokens,)) if n_tokens
              else np.zeros(0, dtype=dtype))
    return TokenCache(d, tokens, offsets, docs[:, 1].astype(np.int64), list(meta["source_ids"]), meta)


def _write(directory: Path, files: Sequence[SourceFile], tokenizer: Tokenizer, key: str, field: str) -> None:
    dtype = token_dtype(tokenizer.vocab_size)
    start = time.perf_counter()
    with open(directory / "tokens.bin", "wb") as out:
        stream = _TokenStream(out, tokenizer, dtype)
        for f in files:
            for source_id, parts in f.parts():
                stream.document(source_id, parts)
        stream.flush()
    ids, offsets, nbytes, total = stream.ids, stream.offsets, stream.nbytes, stream.total

    if total == 0:
        raise ConfigError(f"{field}: the inputs hold no text ({len(files)} files, all empty or skipped as not "
                          "text); point at files with content")
    np.save(directory / "documents.npy", np.array([offsets, nbytes], dtype=np.int64).T.reshape(-1, 2))
    meta = {
        "format": FORMAT_VERSION,
        "key": key,
        "dtype": dtype.name,
        "num_tokens": total,
        "num_documents": len(ids),
        "num_bytes": int(sum(nbytes)),
        "vocab_size": tokenizer.vocab_size,
        "tokenizer_fingerprint": tokenizer.fingerprint,
        "inputs": [{"source_id": f.source_id, "path": str(f.path), "size": f.stat()[0], "mtime_ns": f.stat()[1]}
                   for f in files],
        "source_ids": ids,
        "seconds": round(time.perf_counter() - start, 3),
    }
    # index.json is written last: its presence (with matching sizes) marks a complete entry.
    (directory / "index.json").write_text(json.dumps(meta))
    log.info("token cache: tokenized %d documents, %d tokens (%.1f MB of text) in %.1fs",
             len(ids), total, meta["num_bytes"] / 1e6, meta["seconds"])


class _TokenStream:
    """Documents in, ids out: texts are queued as lines and encoded ``_BATCH_CHARS`` characters at a time.

    A document arrives in parts (``SourceFile.parts``) and is cut into lines (``document_lines``, long
    lines in pieces cut before a space), so memory is bounded by the batch, not by the longest file or
    line. Lines are encoded independently only when that gives the ids of the whole text
    (``Tokenizer.lines_encode_independently`` and, for pieces of one long line,
    ``spaces_encode_independently``); a tokenizer from elsewhere that fails the checks gets whole
    documents (or whole lines), as it would from ``encode``.
    """

    def __init__(self, out, tokenizer: Tokenizer, dtype: np.dtype):
        self.out, self.tokenizer, self.dtype = out, tokenizer, dtype
        self.ids: list[str] = []
        self.offsets: list[int] = []
        self.nbytes: list[int] = []
        self.total = 0
        self.pending: list[str] = []  # texts waiting for the next encode call
        self.starts: list[int] = []  # index into pending where each queued document begins
        self.pending_chars = 0

    def document(self, source_id: str, parts) -> None:
        tok = self.tokenizer
        if tok.spaces_encode_independently:
            texts = document_lines(parts)
        elif tok.lines_encode_independently:
            texts = document_lines(parts, max_chars=sys.maxsize)
        else:
            texts = iter(("".join(parts),))
        self.starts.append(len(self.pending))
        nbytes = 0
        for text in texts:
            if not text:
                continue
            nbytes += len(text.encode("utf-8"))
            self.pending.append(text)
            self.pending_chars += len(text)
            if self.pending_chars >= _BATCH_CHARS:
                self.flush()
        if nbytes == 0:  # an empty document takes no place (no lines were queued, so no flush ran)
            self.starts.pop()
            return
        self.ids.append(source_id)
        self.nbytes.append(nbytes)

    def flush(self) -> None:
        if not self.pending:
            return
        starts = iter(self.starts)
        begin = next(starts, None)
        for i, toks in enumerate(self.tokenizer.encode_batch(self.pending)):
            while begin == i:  # a document begins with this text
                self.offsets.append(self.total)
                begin = next(starts, None)
            self.out.write(np.fromiter(toks, dtype=self.dtype, count=len(toks)).tobytes())
            self.total += len(toks)
        self.pending, self.starts, self.pending_chars = [], [], 0
        log.info("token cache: %d documents, %d tokens so far", len(self.offsets), self.total)
