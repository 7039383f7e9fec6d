"""Quality filters: named rules that each decide "drop" or "keep" from one document alone.

``binary`` comes first: a binary file or a text in another encoding read as UTF-8 is a run of
replacement and control characters that every later rule would measure as nonsense words.

Why these rules (after Gopher, Rae et al. 2021, and C4): machine-generated or scraped junk shows up
as documents that are too short or too long, are mostly markup symbols (``#``, ``...``), repeat the
same lines or phrases over and over, or carry boilerplate (cookie banners, "JavaScript is
disabled", lorem ipsum). Each rule is cheap, looks at one document, and has its thresholds in
``filters.<rule>`` of the config; a disabled rule is simply not built.

The repetition rules work on word n-gram *hashes* (see ``words``) with numpy, so their cost is a few
sorts per document rather than Python dictionaries of tuples.
"""

from __future__ import annotations

import re
from functools import cached_property

import numpy as np

from llm_modules.data.prepare import words as W
from llm_modules.data.prepare.config import FiltersConfig
from llm_modules.data.text_reading import count_bad


class Doc:
    """One document and the views of it the rules share, each computed at most once."""

    __slots__ = ("__dict__", "text")

    def __init__(self, text: str):
        self.text = text

    @cached_property
    def lower(self) -> str:
        return self.text.lower()

    @cached_property
    def _words(self) -> tuple[np.ndarray, np.ndarray]:
        return W.word_hashes(self.text, self.lower)

    @property
    def hashes(self) -> np.ndarray:
        """uint64 hash of every word (lower-cased ``\\w+`` tokens), in order."""
        return self._words[0]

    @property
    def n_words(self) -> int:
        return len(self._words[0])

    @cached_property
    def word_chars(self) -> np.ndarray:
        """Cumulative word lengths, with a leading 0: chars of words[i:j] = c[j] - c[i]."""
        return np.concatenate(([0], np.cumsum(self._words[1])))

    @cached_property
    def lines(self) -> list[str]:
        """Non-empty lines, stripped."""
        return [s for s in (line.strip() for line in self.text.split("\n")) if s]


class Rule:
    name = ""

    def drops(self, doc: Doc) -> bool:
        raise NotImplementedError


class Binary(Rule):
    """NUL characters, or more than ``max_bad_share`` of the characters undecodable or control characters
    (``text_reading.BAD_CHARS``, what fit's binary check counts too)."""

    name = "binary"

    def __init__(self, drop_nul: bool, max_bad_share: float):
        self.drop_nul, self.max_bad_share = drop_nul, max_bad_share

    def drops(self, doc: Doc) -> bool:
        text = doc.text
        if self.drop_nul and "\x00" in text:
            return True
        limit = self.max_bad_share * len(text)
        return count_bad(text, limit) > limit


class Length(Rule):
    name = "length"

    def __init__(self, min_chars=None, max_chars=None, min_words=None, max_words=None):
        self.min_chars, self.max_chars, self.min_words, self.max_words = min_chars, max_chars, min_words, max_words

    def drops(self, doc: Doc) -> bool:
        n = len(doc.text)
        if (self.min_chars is not None and n < self.min_chars) or (self.max_chars is not None and n > self.max_chars):
            return True
        if self.min_words is None and self.max_words is None:
            return False
        w = doc.n_words
        return (self.min_words is not None and w < self.min_words) or (self.max_words is not None and w > self.max_words)


class SymbolRatio(Rule):
    """Symbols (``#``, ``...``, ``…``) per word above ``max_ratio``: lists of hashtags, truncated snippets."""

    name = "symbol_ratio"

    def __init__(self, symbols, max_ratio):
        self.symbols, self.max_ratio = [s for s in symbols if s], max_ratio

    def drops(self, doc: Doc) -> bool:
        count = sum(doc.text.count(s) for s in self.symbols)
        if count == 0:
            return False
        return count / max(doc.n_words, 1) > self.max_ratio


class Boilerplate(Rule):
    """Lines matching boilerplate patterns: more than ``max_line_share`` of the lines (0: any) drops.

    Patterns are searched one by one in the lower-cased text (so they are written in lower case):
    a pattern that starts with a literal is then found by a fast substring scan, where one
    case-insensitive alternation of all patterns would try every pattern at every character.
    """

    name = "boilerplate"

    def __init__(self, patterns, max_line_share):
        self.patterns = [re.compile(p) for p in patterns]
        self.max_line_share = max_line_share

    def drops(self, doc: Doc) -> bool:
        lower = doc.lower
        hits = [p for p in self.patterns if p.search(lower) is not None]
        if not hits:
            return False
        if self.max_line_share <= 0:
            return True
        lines = [line.strip() for line in lower.split("\n")]
        lines = [line for line in lines if line]
        matching = sum(1 for line in lines if any(p.search(line) for p in hits))
        return matching / max(len(lines), 1) > self.max_line_share


class DuplicateLines(Rule):
    """Repeated lines (every occurrence after the first) as a share of lines and of line characters."""

    name = "duplicate_lines"

    def __init__(self, max_line_share, max_char_share):
        self.max_line_share, self.max_char_share = max_line_share, max_char_share

    def drops(self, doc: Doc) -> bool:
        lines = doc.lines
        if len(lines) < 2:
            return False
        seen: set[str] = set()
        dup_lines = dup_chars = total_chars = 0
        for line in lines:
            total_chars += len(line)
            if line in seen:
                dup_lines += 1
                dup_chars += len(line)
            else:
                seen.add(line)
        if self.max_line_share is not None and dup_lines / len(lines) > self.max_line_share:
            return True
        return self.max_char_share is not None and dup_chars / max(total_chars, 1) > self.max_char_share


class TopNgrams(Rule):
    """The most frequent word n-gram (seen at least twice) covers too many of the word characters."""

    name = "top_ngrams"

    def __init__(self, thresholds: dict[int, float]):
        self.thresholds = sorted(thresholds.items())

    def drops(self, doc: Doc) -> bool:
        total = doc.word_chars[-1] if doc.n_words else 0
        if total == 0:
            return False
        for n, limit in self.thresholds:
            grams = W.ngram_hashes(doc.hashes, n)
            if len(grams) < 2:
                continue
            values, counts = np.unique(grams, return_counts=True)
            top = int(np.argmax(counts))
            if counts[top] < 2:
                continue
            i = int(np.argmax(grams == values[top]))  # its first occurrence
            chars = int(counts[top]) * int(doc.word_chars[i + n] - doc.word_chars[i])
            if chars / total > limit:
                return True
        return False


class DuplicateNgrams(Rule):
    """Words inside repeated n-grams (occurrences after the first; overlaps counted once) cover too many
    of the word characters."""

    name = "duplicate_ngrams"

    def __init__(self, thresholds: dict[int, float]):
        self.thresholds = sorted(thresholds.items())

    def drops(self, doc: Doc) -> bool:
        n_words = doc.n_words
        total = doc.word_chars[-1] if n_words else 0
        if total == 0:
            return False
        lengths = np.diff(doc.word_chars)
        for n, limit in self.thresholds:
            grams = W.ngram_hashes(doc.hashes, n)
            if len(grams) < 2:
                continue
            # a stable sort puts equal n-grams together in order of position: every one that equals its
            # predecessor is a repeat (the first occurrence is the original, not counted)
            order = np.argsort(grams, kind="stable")
            ordered = grams[order]
            starts = order[1:][ordered[1:] == ordered[:-1]]
            if len(starts) == 0:
                continue
            cover = np.zeros(n_words + 1, dtype=np.int64)
            np.add.at(cover, starts, 1)
            np.add.at(cover, starts + n, -1)
            covered = np.cumsum(cover[:-1]) > 0
            if lengths[covered].sum() / total > limit:
                return True
        return False


def build_rules(config: FiltersConfig) -> list[Rule]:
    """The enabled rules, cheapest first (the order the report charges drops in)."""
    rules: list[Rule] = []
    c = config
    if c.binary.enabled:
        rules.append(Binary(c.binary.drop_nul, c.binary.max_bad_share))
    if c.length.enabled:
        rules.append(Length(c.length.min_chars, c.length.max_chars, c.length.min_words, c.length.max_words))
    if c.symbol_ratio.enabled:
        rules.append(SymbolRatio(c.symbol_ratio.symbols, c.symbol_ratio.max_ratio))
    if c.boilerplate.enabled and c.boilerplate.patterns:
        rules.append(Boilerplate(c.boilerplate.patterns, c.boilerplate.max_line_share))
    if c.duplicate_lines.enabled:
        rules.append(DuplicateLines(c.duplicate_lines.max_line_share, c.duplicate_lines.max_char_share))
    if c.top_ngrams.enabled and c.top_ngrams.thresholds:
        rules.append(TopNgrams(c.top_ngrams.thresholds))
    if c.duplicate_ngrams.enabled and c.duplicate_ngrams.thresholds:
        rules.append(DuplicateNgrams(c.duplicate_ngrams.thresholds))
    return rules
