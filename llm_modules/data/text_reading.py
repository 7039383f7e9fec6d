"""Reading text files safely: UTF-8 with counted replacements, a binary check, and bounded lines.

Why a module of its own: training data is whatever a user points at, including binary files, text in
another encoding and files that are one enormous line. Each must either be read with bounded memory
or be named in one line, never slip through silently; ``sources`` (training and ``data prepare``)
and ``tokenizer`` (training on files) read through these functions.

- :func:`read_parts` / :func:`read_lines`: UTF-8 with each undecodable byte sequence replaced by
  U+FFFD (as ``errors="replace"``), counting the replacements so a caller can say how many there
  were; text mode, so ``\\r\\n`` and ``\\r`` read as ``\\n`` exactly as ``Path.read_text`` did.
- :func:`binary_reason`: whether a file is not text at all, judged from its head like ``git`` and
  ``grep`` do (NUL bytes, or mostly undecodable/control characters).
- :func:`document_lines`: a document's lines, very long ones in pieces cut before a space, so a
  200 MB line is never split, held or encoded whole.
"""

from __future__ import annotations

import codecs
import os
import re
from collections.abc import Callable, Iterable, Iterator

READ_CHARS = 1 << 20  # characters read from a text file at a time
MAX_LINE_CHARS = 1 << 16  # longest line handed on whole; longer ones come in pieces (document_lines)
SNIFF_BYTES = 1 << 16  # head of a file checked for being binary
BINARY_SHARE = 0.3  # share of undecodable/control characters in the head that makes a file binary
# What text is not made of: U+FFFD (what an undecodable byte becomes), C0 controls except \t \n \v
# \f \r, DEL and C1 controls. Both the binary check here and data prepare's ``binary`` rule count these.
BAD_CHARS = re.compile(r"[\x00-\x08\x0e-\x1f\x7f-\x9f\ufffd]")

# Decoding with this error handler is decoding with errors="replace" (one U+FFFD per undecodable
# sequence) that also counts the replacements. The count is global; readers take the difference
# around each read, so generators paused between reads do not mix their counts.
_COUNTING = "llm_modules.count_replacements"
_replacements = 0


def _count_replacement(err: UnicodeDecodeError) -> tuple[str, int]:
    global _replacements
    _replacements += 1
    return "\ufffd", err.end


codecs.register_error(_COUNTING, _count_replacement)

OnReplaced = Callable[[int], None]


def read_parts(path: str | os.PathLike, on_replaced: OnReplaced | None = None,
               size: int = READ_CHARS) -> Iterator[str]:
    """The file's text in consecutive parts of at most ``size`` characters; at the end
    ``on_replaced(n)`` when ``n > 0`` undecodable sequences were replaced."""
    replaced = 0
    with open(path, encoding="utf-8", errors=_COUNTING) as f:
        while True:
            before = _replacements
            part = f.read(size)
            replaced += _replacements - before
            if not part:
                break
            yield part
    if replaced and on_replaced is not None:
        on_replaced(replaced)


def read_lines(path: str | os.PathLike, on_replaced: OnReplaced | None = None) -> Iterator[str]:
    """The file's lines (with their ``\\n``), as :func:`read_parts` decodes them (JSONL files)."""
    replaced = 0
    with open(path, encoding="utf-8", errors=_COUNTING) as f:
        lines = iter(f)
        while True:
            before = _replacements
            line = next(lines, None)
            replaced += _replacements - before
            if line is None:
                break
            yield line
    if replaced and on_replaced is not None:
        on_replaced(replaced)


def count_bad(text: str, limit: float = float("inf")) -> int:
    """How many of ``text``'s characters are ``BAD_CHARS``, counting no further than just past ``limit``
    (clean text: one scan in C with no match; junk: stops early)."""
    bad = 0
    for _ in BAD_CHARS.finditer(text):
        bad += 1
        if bad > limit:
            break
    return bad


def binary_reason(path: str | os.PathLike) -> str | None:
    """Why the file is not text (judged from its first ``SNIFF_BYTES``), or None when it is text."""
    try:
        with open(path, "rb") as f:
            head = f.read(SNIFF_BYTES)
    except OSError:
        return None  # reading it properly will say what is wrong
    if b"\x00" in head:
        return "it has NUL bytes"
    if len(head) == SNIFF_BYTES:  # do not count a multi-byte character cut at the end of the head
        head = head[:-3]
    text = head.decode("utf-8", errors="replace")
    bad = count_bad(text)
    if text and bad / len(text) > BINARY_SHARE:
        return f"{bad:,} of the first {len(text):,} characters are undecodable or control characters"
    return None


def document_lines(parts: Iterable[str], max_chars: int = MAX_LINE_CHARS) -> Iterator[str]:
    """The lines of a document given in parts, each with its ``"\\n"`` (the last one's only if the text
    ends with one); joined they are the text.

    A line longer than ``max_chars`` comes in pieces of at most ``max_chars``, each cut just before a
    space that follows a non-space character (in the second half of the piece) where there is one,
    else at ``max_chars``. A tokenizer whose pieces never hold a space after another character
    (``Tokenizer.spaces_encode_independently``) encodes such pieces to exactly the ids of the whole
    line, and memory stays bounded by ``max_chars`` plus one part.
    """
    carry = ""
    for part in parts:
        if carry:
            part = carry + part
        start = 0
        while True:
            end = part.find("\n", start)
            if end < 0:
                break
            yield from _pieces(part, start, end + 1, max_chars)
            start = end + 1
        while len(part) - start > max_chars:
            cut = _cut(part, start, start + max_chars)
            yield part[start:cut]
            start = cut
        carry = part[start:]
    if carry:
        yield carry


def _pieces(text: str, start: int, end: int, max_chars: int) -> Iterator[str]:
    while end - start > max_chars:
        cut = _cut(text, start, start + max_chars)
        yield text[start:cut]
        start = cut
    yield text[start:end]


def _cut(text: str, start: int, limit: int) -> int:
    """Where to end a piece of ``text[start:limit]``: before the last space that follows a non-space."""
    floor = start + (limit - start) // 2
    i = text.rfind(" ", floor + 1, limit + 1)
    while i > floor:
        if not text[i - 1].isspace():
            return i
        i = text.rfind(" ", floor + 1, i)
    return limit
