"""Where text comes from: turn the entries of a ``paths`` list into files and the files into documents.

An entry is a file, a directory (searched recursively for ``pattern``), a glob, a JSONL file (one
document per line, text under ``text_field``) or the name ``python-stdlib``: the running
interpreter's standard library source, a corpus every Python install carries, so the quickstart
needs no download.

Every document has a stable ``source_id`` (the entry as written plus the path below it, and
``#line`` for JSONL). The train/validation split is a function of that id, so it does not move when
the cache is rebuilt, the machine changes, or the interpreter lives somewhere else.

A directory written by ``llm-modules data prepare`` (it holds ``prepare-manifest.json``) stands for
exactly its output shards, in order (never its report or checkpoint files), read as JSONL with the
``text`` field whatever ``text_field`` says; one whose preparation has not finished is refused with
a message to rerun the preparation. This holds for an entry naming the directory, a glob matching
it, and a directory found inside another one.

Resolving only lists files and reads their size and mtime (cheap): that is what keys the token
cache. Text is read lazily, document by document, when the cache is built.

Bad bytes. A text file is decoded as UTF-8 with each undecodable byte sequence replaced by U+FFFD;
when that happens, one log line names the file and the count. A file that is not text at all (a NUL
byte in its first 64 KiB, or more than 30% of that head undecodable or control characters) is
skipped with one log line naming it: its "text" would teach the model noise. ``data prepare`` reads
with ``screen=False`` instead, so its ``binary`` rule sees such files and counts them in its report.

Long lines. :meth:`SourceFile.parts` reads a text file 1M characters at a time and
``text_reading.document_lines`` cuts a document into lines of bounded length, so a file that is one
200 MB line is never held, split or encoded whole (tokenizer training and the token cache both read
through them). The decoding, the binary check and the line cutting live in ``text_reading``.
"""

from __future__ import annotations

import fnmatch
import glob
import hashlib
import json
import logging
import os
import sysconfig
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from llm_modules.data.text_reading import binary_reason, read_lines, read_parts
from llm_modules.registry import ConfigError

STDLIB = "python-stdlib"
DEFAULT_PATTERNS = ("*.py", "*.txt", "*.md", "*.rst", "*.jsonl")
# Folders left out of the stdlib corpus: test suites (large, repetitive, full of deliberately odd
# code and non-UTF-8 files), installed third-party packages, and byte-code caches.
STDLIB_EXCLUDED_DIRS = frozenset({
    "test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__", "lib-dynload",
})
_SKIPPED_DIRS = frozenset({"__pycache__", "node_modules"})
_GLOB_CHARS = "*?["
_PREPARE_MANIFEST = "prepare-manifest.json"  # = llm_modules.data.prepare.manifest.MANIFEST

log = logging.getLogger(__name__)

_reported: set[tuple] = set()  # (path, size, mtime, what): each file's problem is logged once per process


@dataclass(frozen=True)
class Document:
    """One unit of text; the split and EOS placement work per document."""

    source_id: str
    text: str


@dataclass(frozen=True)
class SourceFile:
    """A file to read: a text file (one document) or a JSONL file (one document per line)."""

    path: Path  # absolute
    source_id: str  # stable name, independent of where the data lives on disk for python-stdlib
    kind: str  # "text" or "jsonl"
    field: str  # the config entry it came from, e.g. "data.paths[1]", for messages
    text_field: str = "text"

    def stat(self) -> tuple[int, int]:
        st = self.path.stat()
        return st.st_size, st.st_mtime_ns

    def documents(self, screen: bool = True) -> Iterator[Document]:
        """Every document of the file, whole. ``screen``: skip a binary file and log undecodable bytes
        (the module docstring); ``data prepare`` passes False."""
        for source_id, parts in self.parts(screen):
            yield Document(source_id, "".join(parts))

    def parts(self, screen: bool = True) -> Iterator[tuple[str, Iterator[str]]]:
        """``(source_id, parts)`` per document, the text in consecutive parts: a text file is read
        ``text_reading.READ_CHARS`` characters at a time, so it is never held whole. Consume each document's parts
        before asking for the next document."""
        if self.kind == "jsonl":
            for doc in self._jsonl_documents(screen):
                yield doc.source_id, iter((doc.text,))
            return
        if screen:
            reason = binary_reason(self.path)
            if reason is not None:
                self._report("binary", f"{self.field}: skipped {str(self.path)!r}: not text ({reason}); remove "
                                       "it from the data or narrow data.pattern")
                return
        yield self.source_id, self._text_parts(screen)

    def _text_parts(self, screen: bool) -> Iterator[str]:
        yield from read_parts(self.path, self._report_replaced if screen else None)

    def _report_replaced(self, replaced: int) -> None:
        self._report("replaced", f"{self.field}: {str(self.path)!r} is not valid UTF-8: {replaced:,} undecodable "
                                 f"byte sequence(s) replaced by U+FFFD; re-encode it as UTF-8 (e.g. iconv -f "
                                 "latin1 -t utf-8) or remove it")

    def _report(self, what: str, message: str) -> None:
        try:
            key = (str(self.path), *self.stat(), what)
        except OSError:
            key = (str(self.path), what)
        if key not in _reported:
            _reported.add(key)
            log.warning(message)

    def _jsonl_documents(self, screen: bool = True) -> Iterator[Document]:
        for number, line in enumerate(read_lines(self.path, self._report_replaced if screen else None), start=1):
            if line.strip():
                text = self.record_text(line, f"line {number}")
                yield Document(f"{self.source_id}#{number}", text)

    def record_text(self, line: str, position: str) -> str:
        """The text of one non-blank JSONL line; ``position`` says where it is (``"line 12"``) for the
        message a bad line raises."""
        where = f"{self.field}: {str(self.path)!r} {position}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{where} is not valid JSON ({err.msg}); fix the line or remove it") from None
        if not isinstance(record, dict):
            raise ConfigError(f"{where} is a JSON {type(record).__name__}, expected an object with "
                              f"a {self.text_field!r} field")
        if self.text_field not in record:
            keys = ", ".join(sorted(record)) or "none"
            raise ConfigError(
                f"{where} has no {self.text_field!r} field (its keys: {keys}); set data.text_field "
                "to the key that holds the text"
            )
        text = record[self.text_field]
        if not isinstance(text, str):
            raise ConfigError(f"{where}: field {self.text_field!r} holds a {type(text).__name__}, "
                              "expected a string")
        return text


def resolve_paths(
    paths: str | Sequence[str] | None,
    *,
    pattern: str | Sequence[str] | None = None,
    text_field: str = "text",
    field: str = "data.paths",
    first_index: int = 0,
) -> list[SourceFile]:
    """Expand ``paths`` entries into a de-duplicated, ordered list of files.

    ``field`` is the config key that holds the list; errors name the entry (``data.paths[1]``),
    counting from ``first_index`` (for callers that resolve one entry of a longer list).
    Raises ConfigError for an empty list, a missing path, a glob that matches nothing or a
    directory without matching files.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    if not paths:
        raise ConfigError(f"{field}: no data given; list files, directories, globs, JSONL files or {STDLIB!r}")
    patterns = _patterns(pattern)
    files: list[SourceFile] = []
    seen: set[Path] = set()
    for i, entry in enumerate(paths, start=first_index):
        where = f"{field}[{i}]"
        for f in _resolve_entry(str(entry), patterns, text_field, where):
            if f.path not in seen:
                seen.add(f.path)
                files.append(f)
    return files


def iter_documents(files: Iterable[SourceFile]) -> Iterator[Document]:
    """Every document of every file, in order (binary files skipped, see the module docstring)."""
    for f in files:
        yield from f.documents()


def iter_parts(files: Iterable[SourceFile]) -> Iterator[tuple[str, Iterator[str]]]:
    """``(source_id, parts)`` of every document of every file, in order (:meth:`SourceFile.parts`)."""
    for f in files:
        yield from f.parts()


def inputs_fingerprint(files: Sequence[SourceFile], **settings) -> str:
    """sha256 over ids, paths, sizes and mtimes (plus ``settings``): changes when any input changes."""
    h = hashlib.sha256()
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    for f in files:
        size, mtime = f.stat()
        h.update(json.dumps([f.source_id, str(f.path), f.kind, f.text_field, size, mtime]).encode())
    return h.hexdigest()


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files(field: str = STDLIB, text_field: str = "text") -> list[SourceFile]:
    """The ``.py`` files of the running interpreter's standard library, test folders excluded."""
    root = stdlib_root()
    if not root.is_dir():
        raise ConfigError(f"{field}: this interpreter has no standard library source at {str(root)!r}; "
                          "give other data paths")
    found = []
    for path in _walk(root, ("*.py",), excluded=STDLIB_EXCLUDED_DIRS):
        rel = path.relative_to(root).as_posix()
        found.append(SourceFile(path, f"{STDLIB}/{rel}", "text", field, text_field))
    if not found:
        raise ConfigError(f"{field}: no .py files under {str(root)!r}; give other data paths")
    return found


# ---- internals ------------------------------------------------------------------------------------------


def _patterns(pattern: str | Sequence[str] | None) -> tuple[str, ...]:
    if pattern is None:
        return DEFAULT_PATTERNS
    if isinstance(pattern, str):
        pattern = [p.strip() for p in pattern.split(",")]
    pats = tuple(p for p in pattern if p)
    if not pats:
        raise ConfigError("data.pattern is empty; give a glob such as '*.py' or a list of them")
    return pats


def _kind(path: Path) -> str:
    return "jsonl" if path.suffix.lower() == ".jsonl" else "text"


def _resolve_entry(entry: str, patterns: tuple[str, ...], text_field: str, where: str) -> list[SourceFile]:
    if entry.strip().lower() == STDLIB:
        return stdlib_files(where, text_field)
    expanded = os.path.expandvars(os.path.expanduser(entry))
    if any(c in expanded for c in _GLOB_CHARS):
        matches = sorted(glob.glob(expanded, recursive=True))
        if not _SKIPPED_DIRS & set(Path(expanded).parts):  # byte-code caches only when asked for by name
            matches = [m for m in matches if not _SKIPPED_DIRS & set(Path(m).parts)]
        if not matches:
            raise ConfigError(f"{where}: glob {entry!r} matches nothing (searched from {os.getcwd()}); "
                              "check the pattern or the current directory")
        out = []
        for m in matches:
            p = Path(m)
            if p.is_dir():
                out.extend(_prepared(p, m, where) or _directory(p, m, patterns, text_field, where, required=False))
            elif p.is_file():
                out.append(SourceFile(p.resolve(), Path(m).as_posix(), _kind(p), where, text_field))
        if not out:
            raise ConfigError(f"{where}: glob {entry!r} matches no files of types {', '.join(patterns)}; "
                              "set data.pattern or change the glob")
        return out
    p = Path(expanded)
    if not p.exists():
        raise ConfigError(
            f"{where}: {entry!r} does not exist (relative paths start at {os.getcwd()}); give an existing "
            f"file, directory or glob, or {STDLIB!r} for the built-in corpus"
        )
    if p.is_dir():
        return _prepared(p, entry, where) or _directory(p, entry, patterns, text_field, where, required=True)
    return [SourceFile(p.resolve(), Path(entry).as_posix(), _kind(p), where, text_field)]


def _prepared(root: Path, shown: str, where: str) -> list[SourceFile] | None:
    """The shards of a directory written by ``llm-modules data prepare``; None for any other directory."""
    if not (root / _PREPARE_MANIFEST).is_file():
        return None
    from llm_modules.data.prepare.manifest import prepared_shards

    shards = prepared_shards(root, where)
    if shards is None:
        return None
    prefix = Path(shown).as_posix().rstrip("/")
    return [SourceFile(path.resolve(), f"{prefix}/{path.name}", "jsonl", where, "text") for path in shards]


def _directory(root: Path, shown: str, patterns, text_field: str, where: str, required: bool) -> list[SourceFile]:
    out = []
    prefix = Path(shown).as_posix().rstrip("/")
    prepared: list[Path] = []
    for path in _walk(root, patterns, prepared=prepared):
        rel = path.relative_to(root).as_posix()
        out.append(SourceFile(path.resolve(), f"{prefix}/{rel}", _kind(path), where, text_field))
    for sub in prepared:  # prepared directories found inside: their shards, after the plain files
        out.extend(_prepared(sub, f"{prefix}/{sub.relative_to(root).as_posix()}", where) or [])
    if required and not out:
        raise ConfigError(f"{where}: directory {shown!r} has no files matching {', '.join(patterns)}; "
                          "set data.pattern (e.g. '*.txt') or point at another directory")
    return out


def _walk(root: Path, patterns: Sequence[str], excluded: frozenset[str] = frozenset(),
          prepared: list[Path] | None = None) -> Iterator[Path]:
    """Files under ``root`` matching any pattern, in sorted order; hidden and cache folders skipped.

    A pattern with a ``/`` is matched against the path relative to ``root``; otherwise against the name.
    With ``prepared`` (a list), folders written by ``llm-modules data prepare`` are not walked but
    appended to it.
    """
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(
            d for d in dirnames if not d.startswith(".") and d not in _SKIPPED_DIRS and d not in excluded
        )
        base = Path(dirpath)
        if prepared is not None:
            for d in [d for d in dirnames if (base / d / _PREPARE_MANIFEST).is_file()]:
                dirnames.remove(d)
                prepared.append(base / d)
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            path = base / name
            rel = path.relative_to(root).as_posix()
            wanted = any(fnmatch.fnmatch(rel if "/" in pat else name, pat) for pat in patterns)
            if wanted and path.is_file():
                yield path
