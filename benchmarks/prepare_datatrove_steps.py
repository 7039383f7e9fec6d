"""Do datatrove's own steps keep the same documents as ``llm-modules data prepare``'s? (issue 25)

    python benchmarks/prepare_datatrove_steps.py                    # ~50 MB generated corpus (a few minutes)
    python benchmarks/prepare_datatrove_steps.py --size-mb 2 --json steps.json

Why: issue 25 moves ``data prepare`` onto datatrove executors and uses datatrove's own steps where
they match ours "after checking they keep the same documents on our corpora". This script is that
check. On three corpora:

(a) ``tutorial``: the crafted corpus of docs/tutorials/prepare-data.md (its first Python block,
    executed as the docs test runs it, in a temporary folder: ``raw/web`` and ``raw/code``);
(b) ``generated``: the corpus of benchmarks/prepare.py (``generate``: varied stdlib sources with
    planted exact and near copies), ``--size-mb`` MB;
(c) ``planted``: near duplicates with known ground truth: base documents plus copies with one word in
    N replaced (N in ``RATES``) and unrelated documents; the truth is every pair whose word 5-gram
    Jaccard (lower-cased ``\\w+`` words, computed exactly) is at least 0.8;

it runs our stage and datatrove's equivalent, configured as close to ours as its options allow, and
prints per document who drops what:

- quality and repetition filters: our ``length``, ``symbol_ratio``, ``duplicate_lines``, ``top_ngrams``
  and ``duplicate_ngrams`` rules (``Processor``'s rules, default thresholds) against datatrove's
  ``GopherQualityFilter`` + ``GopherRepetitionFilter`` with the same thresholds and their other
  rules switched off (a second row: datatrove's Gopher defaults, every rule on). Both see the text
  after our normalisation, as in the pipeline.
- exact dedup: our whole ``prepare()`` with only ``exact_duplicate`` on, against datatrove's three
  steps (signature -> find dedups -> filter) run with ``LocalPipelineExecutor`` in a temporary folder.
- MinHash dedup: our whole ``prepare()`` with only ``near_duplicate`` on (5-word shingles, threshold
  0.8, 128 permutations, bands x rows chosen from the threshold), against datatrove's four steps
  (signature -> buckets -> cluster -> filter) with 5-gram shingles, at our bands x rows and at its
  default 14 x 8 (that one only on corpora under ``MAX_SECOND_MINHASH``, to stay within a few
  minutes at 50 MB). On (c): precision and recall of "dropped as a near duplicate" (see ``pr``).

Each comparison prints a table (dropped by both / only ours / only theirs / kept by both, wall
seconds) and the first few differing documents with the reason. Datatrove's English word
tokenizer is spaCy's (``pip install spacy``; datatrove does not install it); each text is tokenized
once and shared between datatrove's steps (``SharedTokenizer``), which changes no decision.
Wall seconds: ours include reading the input files, datatrove's start from documents in memory.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import random
import struct
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RATES = (200, 100, 60, 45, 35, 20, 10)  # planted copies: one word in N replaced
COMPARED_RULES = ("length", "symbol_ratio", "duplicate_lines", "top_ngrams", "duplicate_ngrams")
SHOW = 3  # differing documents shown per direction
MAX_SECOND_MINHASH = 10e6  # characters: above, datatrove's MinHash runs at our bands x rows only


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=float, default=50.0, help="generated corpus (b) size (default 50 MB)")
    parser.add_argument("--families", type=int, default=120, help="planted corpus (c): base documents with copies")
    parser.add_argument("--unrelated", type=int, default=600, help="planted corpus (c): unrelated documents")
    parser.add_argument("--words", type=int, default=300, help="planted corpus (c): words per document")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if args.size_mb < 0.5:  # benchmarks/prepare.py's generate samples 20 documents for its eval file
        parser.error(f"--size-mb {args.size_mb:g}: give at least 0.5 (the generator needs 20 documents)")
    return args


# ---- corpora ------------------------------------------------------------------------------------------------


@dataclass
class Corpus:
    name: str
    inputs: list[str]
    ids: list[str] = field(default_factory=list)  # source_id of every document, input order
    texts: list[str] = field(default_factory=list)  # after our normalisation
    truth: list[tuple[int, int]] | None = None  # planted: pairs with true 5-gram Jaccard >= 0.8


def load(corpus: Corpus) -> Corpus:
    """The documents exactly as ``prepare`` reads them (same files, order and source ids)."""
    from llm_modules.data.prepare.config import PrepareConfig
    from llm_modules.data.prepare.normalize import normalize
    from llm_modules.data.sources import resolve_paths

    cfg = PrepareConfig()
    for f in resolve_paths(corpus.inputs, pattern=cfg.pattern, text_field=cfg.text_field, field="inputs"):
        for doc in f.documents(screen=False):
            corpus.ids.append(doc.source_id)
            corpus.texts.append(normalize(doc.text, cfg.normalize))
    if len(set(corpus.ids)) != len(corpus.ids):
        raise RuntimeError(f"{corpus.name}: source ids are not unique")
    return corpus


def tutorial_corpus(root: Path) -> Corpus:
    """Runs the first Python block of the "Prepare data" tutorial (the one that builds its corpus) in
    ``root``, parsed by the docs test's own parser."""
    sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "docs")]
    try:
        from test_docs import parse as parse_page
    finally:
        del sys.path[:2]
    block = next(b for b in parse_page(ROOT / "docs" / "tutorials" / "prepare-data.md") if b.lang == "python")
    root.mkdir(parents=True, exist_ok=True)
    with contextlib.chdir(root):
        exec(compile(block.text, "prepare-data.md", "exec"), {"__name__": "tutorial_corpus"})  # noqa: S102
    return Corpus("tutorial", [str(root / "raw" / "web"), str(root / "raw" / "code")])


def generated_corpus(root: Path, size_mb: float, seed: int) -> Corpus:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from prepare import generate
    finally:
        del sys.path[0]
    inputs, _evals = generate(root, size_mb, seed)
    return Corpus("generated", inputs)


def _vocabulary(rng: random.Random, size: int) -> list[str]:
    syllables = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]
    out: set[str] = set()
    while len(out) < size:
        out.add("".join(rng.choice(syllables) for _ in range(rng.randint(2, 4))))
    return sorted(out)


def planted_corpus(root: Path, families: int, unrelated: int, n_words: int, seed: int) -> Corpus:
    """Bases, copies with one word in N replaced (N in RATES), unrelated documents, shuffled; the
    truth pairs are computed exactly, within each family (documents of different families share no
    5-gram but by chance, their vocabulary being 4,000 invented words)."""
    from llm_modules.data.prepare import words as W

    rng = random.Random(seed)
    vocab = _vocabulary(rng, 4000)
    stop = ["the", "of", "and", "to", "that", "with", "be", "have"]  # so Gopher's defaults find stop words

    def words(n: int) -> list[str]:
        return [rng.choice(stop) if rng.random() < 0.2 else rng.choice(vocab) for _ in range(n)]

    def text(ws: list[str]) -> str:
        return "\n".join(" ".join(ws[i:i + 12]).capitalize() + "." for i in range(0, len(ws), 12))

    docs: list[tuple[int, str]] = []  # (family or -1, text)
    for fam in range(families):
        base = words(n_words)
        docs.append((fam, text(base)))
        for rate in RATES:
            copy = list(base)
            for i in rng.sample(range(n_words), max(1, round(n_words / rate))):
                copy[i] = rng.choice(vocab)
            docs.append((fam, text(copy)))
    docs += [(-1, text(words(n_words))) for _ in range(unrelated)]
    rng.shuffle(docs)
    path = root / "planted" / "docs.jsonl"
    path.parent.mkdir(parents=True)
    path.write_text("".join(json.dumps({"text": t}) + "\n" for _, t in docs), encoding="utf-8")
    shingles = [set(W.ngram_hashes(W.word_hashes(t)[0], 5).tolist()) for _, t in docs]
    by_family: dict[int, list[int]] = {}
    for i, (fam, _) in enumerate(docs):
        if fam >= 0:
            by_family.setdefault(fam, []).append(i)
    truth = []
    for members in by_family.values():
        for x, i in enumerate(members):
            for j in members[x + 1:]:
                if jaccard(shingles[i], shingles[j]) >= 0.8:
                    truth.append((i, j))
    return Corpus("planted", [str(path)], truth=truth)


def jaccard(a: set, b: set) -> float:
    return len(a & b) / max(len(a | b), 1)


# ---- datatrove plumbing -------------------------------------------------------------------------------------


def shared_tokenizer():
    """datatrove's English word tokenizer (spaCy), each text tokenized once: the Gopher filters and the
    MinHash signature steps of several configurations ask for the same text's words again."""
    from datatrove.utils.word_tokenizers import WordTokenizer, load_word_tokenizer

    class SharedTokenizer(WordTokenizer):
        def __init__(self):
            super().__init__("en")
            self.inner = load_word_tokenizer("en")
            self.cache: dict[str, list[str]] = {}

        def word_tokenize(self, text: str) -> list[str]:
            words = self.cache.get(text)
            if words is None:
                words = self.cache[text] = self.inner.word_tokenize(text)
            return words

        def sent_tokenize(self, text: str) -> list[str]:
            return self.inner.sent_tokenize(text)

        def span_tokenize(self, text: str) -> list[tuple[int, int]]:
            return self.inner.span_tokenize(text)

    return SharedTokenizer()


@contextlib.contextmanager
def xxhash_str_shim():
    """datatrove 0.10.1 hashes ``str`` with xxhash (MinHash shingles; exact dedup of a ``str`` getter) and
    pins ``xxhash<4`` (its ``processing`` extra); xxhash 4 refuses ``str`` ("Strings must be encoded
    before hashing"). Where xxhash 4 is installed, datatrove's two xxhash functions get xxhash 3's
    behaviour back (a ``str`` is hashed as its UTF-8 bytes) while this runs, so the steps run as with
    their pinned dependency. Yields a note saying so, or None."""
    import xxhash

    from datatrove.utils.hashes import xxhash as dt_xxhash

    try:
        xxhash.xxh64_intdigest("")
        yield None
        return
    except TypeError:
        pass

    def encoded(fn):
        return lambda data: fn(data.encode("utf-8") if isinstance(data, str) else data)

    saved = dt_xxhash.xxhash32, dt_xxhash.xxhash64
    dt_xxhash.xxhash32, dt_xxhash.xxhash64 = encoded(xxhash.xxh32_intdigest), encoded(xxhash.xxh64_intdigest)
    try:
        yield (f"xxhash {xxhash.VERSION} refuses str and datatrove 0.10.1 wants xxhash<4: its xxhash64/xxhash32 "
               "hash str as UTF-8 for this run (what xxhash 3 does)")
    finally:
        dt_xxhash.xxhash32, dt_xxhash.xxhash64 = saved


def run_pipeline(pipeline: list, logs: Path, tasks: int = 1) -> None:
    """One datatrove pipeline on ``LocalPipelineExecutor`` (in this process), its log lines kept out
    of the tables (they go to ``logs``)."""
    from datatrove.executor import LocalPipelineExecutor

    executor = LocalPipelineExecutor(pipeline, tasks=tasks, workers=1, logging_dir=str(logs))
    with contextlib.redirect_stderr(io.StringIO()):
        executor.run()


def documents(texts: list[str]) -> list:
    from datatrove.data import Document

    return [Document(text=t, id=str(i)) for i, t in enumerate(texts)]


def collector(kept: list[int]):
    def collect(data, rank: int = 0, world_size: int = 1):
        for doc in data:
            kept.append(int(doc.id))
            yield doc
    return collect


def text_of(doc) -> str:  # datatrove picks its hash function from this annotation
    return doc.text


# ---- our side ---------------------------------------------------------------------------------------------


def ours_dedup(corpus: Corpus, out: Path, stage: str) -> tuple[set[int], float]:
    """Indices our whole ``prepare()`` drops with only ``stage`` (exact_duplicate or near_duplicate) on."""
    from llm_modules.data.prepare import PrepareConfig, prepare
    from llm_modules.data.prepare.config import FILTER_RULES

    config = PrepareConfig(inputs=corpus.inputs, out=str(out))
    for rule in (*FILTER_RULES, "pii", "decontamination", "exact_duplicate", "near_duplicate"):
        if rule != stage:
            config.disable(rule)
    t = time.perf_counter()
    prepare(config, progress=False)
    wall = time.perf_counter() - t
    manifest = json.loads((out / "prepare-manifest.json").read_text())
    kept = set()
    for shard in manifest["shards"]:
        with open(out / shard["name"], encoding="utf-8") as f:
            kept.update(json.loads(line)["source_id"] for line in f)
    return {i for i, sid in enumerate(corpus.ids) if sid not in kept}, wall


# ---- comparisons ------------------------------------------------------------------------------------------


def _excerpt(text: str, n: int = 70) -> str:
    flat = " ".join(text.split())
    return repr(flat[:n] + ("..." if len(flat) > n else ""))


def split(n: int, ours: set[int], theirs: set[int]) -> dict[str, int]:
    return {"documents": n, "dropped_by_both": len(ours & theirs), "only_ours": len(ours - theirs),
            "only_theirs": len(theirs - ours), "kept_by_both": n - len(ours | theirs)}


def print_table(title: str, rows: list[tuple[str, dict[str, Any]]]) -> None:
    cols = ("documents", "dropped_by_both", "only_ours", "only_theirs", "kept_by_both", "ours_s", "theirs_s",
            "precision_ours", "recall_ours", "precision_theirs", "recall_theirs")
    used = [c for c in cols if any(c in r for _, r in rows)]
    width = max(len(label) for label, _ in rows) + 2
    print(f"\n== {title}")
    print(" " * width + "  ".join(f"{c:>{max(len(c), 8)}}" for c in used))
    for label, r in rows:
        cells = []
        for c in used:
            v = r.get(c, "")
            v = f"{v:.3f}" if isinstance(v, float) else str(v)
            cells.append(f"{v:>{max(len(c), 8)}}")
        print(f"{label:<{width}}" + "  ".join(cells))


def print_diffs(corpus: Corpus, label: str, docs: list[int], reason) -> list[dict]:
    """The first ``SHOW`` documents of ``docs`` with ``reason(i)``: a text or (category, text)."""
    shown = []
    for i in sorted(docs)[:SHOW]:
        why = reason(i)
        why = why if isinstance(why, str) else f"{why[0]}: {why[1]}"
        shown.append({"doc": corpus.ids[i], "excerpt": corpus.texts[i][:200], "reason": why})
        print(f"  {label}: {corpus.ids[i]} {_excerpt(corpus.texts[i])}\n      -> {why}")
    return shown


def tally(corpus: Corpus, docs: set[int], reason, limit: int = 3000) -> dict[str, int]:
    """Every differing document's reason category, counted (the first ``limit`` documents)."""
    counts = Counter(reason(i)[0] for i in sorted(docs)[:limit])
    if counts:
        print("  all differences: " + "; ".join(f"{k} {v}" for k, v in counts.most_common()))
    return dict(counts)


def compare_filters(corpus: Corpus, tok) -> dict[str, Any]:
    from datatrove.data import Document
    from datatrove.pipeline.filters import GopherQualityFilter, GopherRepetitionFilter
    from datatrove.utils.text import PUNCTUATION_SET

    from llm_modules.data.prepare.config import PrepareConfig
    from llm_modules.data.prepare.filters import Doc, build_rules

    f = PrepareConfig().filters
    rules = [r for r in build_rules(f) if r.name in COMPARED_RULES]
    matched = [
        GopherQualityFilter(min_doc_words=f.length.min_words, max_doc_words=f.length.max_words,
                            min_avg_word_length=None, max_avg_word_length=None,
                            max_symbol_word_ratio=f.symbol_ratio.max_ratio, max_bullet_lines_ratio=None,
                            max_ellipsis_lines_ratio=None, max_non_alpha_words_ratio=None, min_stop_words=None,
                            language=tok),
        GopherRepetitionFilter(dup_line_frac=f.duplicate_lines.max_line_share, dup_para_frac=None,
                               dup_line_char_frac=f.duplicate_lines.max_char_share, dup_para_char_frac=None,
                               top_n_grams=tuple(sorted(f.top_ngrams.thresholds.items())),
                               dup_n_grams=tuple(sorted(f.duplicate_ngrams.thresholds.items())), language=tok),
    ]
    defaults = [GopherQualityFilter(language=tok), GopherRepetitionFilter(language=tok)]

    def theirs(filters, doc) -> str | None:
        for flt in filters:
            verdict = flt.filter(doc)
            if verdict is not True:
                return verdict[1] if isinstance(verdict, tuple) else "dropped"
        return None

    ours_fired: dict[int, list[str]] = {}
    t_ours = t_theirs = t_default = 0.0
    their_reason: dict[int, str] = {}
    default_reason: dict[int, str] = {}
    clock = time.perf_counter
    for i, text in enumerate(corpus.texts):
        t0 = clock()
        if not text:
            fired = ["empty"]
        else:
            view = Doc(text)
            fired = [r.name for r in rules if r.drops(view)]
        t1 = clock()
        doc = Document(text=text, id=str(i))
        why = theirs(matched, doc)
        t2 = clock()
        why_default = theirs(defaults, doc)
        t3 = clock()
        tok.cache.clear()
        t_ours, t_theirs, t_default = t_ours + t1 - t0, t_theirs + t2 - t1, t_default + t3 - t2
        if fired:
            ours_fired[i] = fired
        if why:
            their_reason[i] = why
        if why_default:
            default_reason[i] = why_default
    n = len(corpus.texts)
    ours, matched_set, default_set = set(ours_fired), set(their_reason), set(default_reason)
    rows = [("datatrove Gopher, our thresholds",
             {**split(n, ours, matched_set), "ours_s": t_ours, "theirs_s": t_theirs}),
            ("datatrove Gopher, its defaults", {**split(n, ours, default_set), "theirs_s": t_default})]
    print_table(f"{corpus.name}: quality + repetition filters ({', '.join(COMPARED_RULES)})", rows)

    def counts(i: int) -> str:
        text = corpus.texts[i]
        words = tok.inner.word_tokenize(text)
        non_symbol = sum(1 for w in words if any(ch not in PUNCTUATION_SET for ch in w))
        return f"words: ours {Doc(text).n_words}, theirs {non_symbol} non-symbol of {len(words)} tokens"

    def reason(i: int) -> str:
        mine = "+".join(ours_fired.get(i, [])) or "kept"
        return f"ours: {mine}; theirs: {their_reason.get(i, 'kept')} ({counts(i)})"

    diffs = print_diffs(corpus, "only ours", list(ours - matched_set), reason)
    diffs += print_diffs(corpus, "only theirs", list(matched_set - ours), reason)
    by_rule = Counter(r for i in ours - matched_set for r in ours_fired[i])
    by_their = Counter(their_reason[i] for i in matched_set - ours)
    default_only = Counter(default_reason[i] for i in default_set - ours)
    if by_rule or by_their:
        print("  all differences: only ours by our rules " + (", ".join(f"{k} {v}" for k, v in by_rule.most_common())
                                                         or "-")
              + "; only theirs by their reason " + (", ".join(f"{k} {v}" for k, v in by_their.most_common()) or "-"))
    if default_only:
        print("  datatrove defaults drop besides ours: " + ", ".join(f"{k} {v}" for k, v in default_only.most_common()))
    return {"matched": rows[0][1], "defaults": rows[1][1], "only_ours_by_rule": dict(by_rule),
            "only_theirs_by_reason": dict(by_their), "defaults_only_by_reason": dict(default_only),
            "examples": diffs}


def compare_exact(corpus: Corpus, work: Path) -> dict[str, Any]:
    from datatrove.pipeline.dedup.exact_dedup import (
        ExactDedupConfig,
        ExactDedupFilter,
        ExactDedupSignature,
        ExactFindDedups,
    )

    ours, t_ours = ours_dedup(corpus, work / "ours-exact", "exact_duplicate")
    docs = documents(corpus.texts)
    cfg = ExactDedupConfig(content_getter=text_of)
    d = work / "dt-exact"
    kept: list[int] = []
    t = time.perf_counter()
    run_pipeline([docs, ExactDedupSignature(str(d / "sigs"), cfg)], d / "log1")
    run_pipeline([ExactFindDedups(str(d / "sigs"), str(d / "dups"), cfg)], d / "log2")
    run_pipeline([docs, ExactDedupFilter(str(d / "dups"), cfg), collector(kept)], d / "log3")
    t_theirs = time.perf_counter() - t
    theirs = set(range(len(docs))) - set(kept)
    row = {**split(len(docs), ours, theirs), "ours_s": t_ours, "theirs_s": t_theirs}
    print_table(f"{corpus.name}: exact dedup", [("datatrove exact dedup (xxhash64 of the text)", row)])
    first: dict[str, int] = {}
    for i, text in enumerate(corpus.texts):
        first.setdefault(text, i)

    def reason(i: int) -> str:
        if not corpus.texts[i]:
            return "empty after normalisation: ours drops it as 'empty' before dedup, theirs hashes ''"
        j = first[corpus.texts[i]]
        if j != i:
            return f"identical text to {corpus.ids[j]}, the other side kept it (hash collision?)"
        return "no identical earlier text (64-bit hash collision in theirs?)"

    diffs = print_diffs(corpus, "only ours", list(ours - theirs), reason)
    diffs += print_diffs(corpus, "only theirs", list(theirs - ours), reason)
    return {**row, "examples": diffs}


class Shingles:
    """Every document's word 5-gram set the way ours defines words, for exact Jaccards of a few pairs."""

    def __init__(self, texts: list[str]):
        from llm_modules.data.prepare import words as W

        sets = [np.unique(W.ngram_hashes(W.word_hashes(t)[0], 5)) for t in texts]
        self.sets = sets
        self.sizes = np.array([len(s) for s in sets])
        self.flat = np.concatenate(sets) if sets else np.empty(0, dtype=np.uint64)
        self.owner = np.repeat(np.arange(len(sets)), self.sizes)

    def pair(self, i: int, j: int) -> float:
        common = len(np.intersect1d(self.sets[i], self.sets[j], assume_unique=True))
        return common / max(len(self.sets[i]) + len(self.sets[j]) - common, 1)

    def best(self, i: int) -> tuple[int, float]:
        """The other document with the highest Jaccard to ``i`` and that Jaccard (-1, 0.0: none shares one)."""
        hits = np.bincount(self.owner[np.isin(self.flat, self.sets[i])], minlength=len(self.sets))
        hits[i] = 0
        if hits.max(initial=0) == 0:
            return -1, 0.0
        score = hits / np.maximum(self.sizes + self.sizes[i] - hits, 1)
        j = int(np.argmax(score))
        return j, float(score[j])


def datatrove_minhash(corpus: Corpus, work: Path, bands: int, rows: int, tok):
    """Documents datatrove's four MinHash steps drop, the pairs its buckets found, its signature step
    (to read its shingles back) and the wall seconds."""
    from datatrove.pipeline.dedup.minhash import (
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )

    cfg = MinhashConfig(n_grams=5, num_buckets=bands, hashes_per_bucket=rows, seed=1)
    d = work / f"dt-minhash-{bands}x{rows}"
    docs = documents(corpus.texts)
    signer = MinhashDedupSignature(str(d / "sigs"), config=cfg, language=tok)
    kept: list[int] = []
    t = time.perf_counter()
    run_pipeline([docs, signer], d / "log1")
    run_pipeline([MinhashDedupBuckets(str(d / "sigs"), str(d / "buckets"), config=cfg)], d / "log2", tasks=bands)
    run_pipeline([MinhashDedupCluster(str(d / "buckets"), str(d / "remove"), config=cfg)], d / "log3")
    run_pipeline([docs, MinhashDedupFilter(str(d / "remove")), collector(kept)], d / "log4")
    wall = time.perf_counter() - t
    pairs: dict[int, set[int]] = {}
    for dups in sorted((d / "buckets").glob("*.dups")):
        raw = dups.read_bytes()
        for _, d1, _, d2 in struct.iter_unpack("<4I", raw):
            pairs.setdefault(d1, set()).add(d2)
            pairs.setdefault(d2, set()).add(d1)
    return set(range(len(docs))) - set(kept), pairs, signer, wall


def pr(dropped: set[int], truth: list[tuple[int, int]]) -> tuple[float, float]:
    """Precision and recall of "dropped as a near duplicate" against the truth pairs, defined so that
    neither keep-first (ours) nor a union-find root (datatrove) is favoured by which copy it keeps:

    - precision: the share of dropped documents that have a true near duplicate (Jaccard >= 0.8) among
      the kept documents, i.e. whose content is still in the output;
    - recall: the share of true pairs resolved, i.e. with at least one of the two documents dropped
      (a pair with both kept is a near duplicate left in the output).
    """
    partners: dict[int, set[int]] = {}
    for a, b in truth:
        partners.setdefault(a, set()).add(b)
        partners.setdefault(b, set()).add(a)
    represented = sum(1 for d in dropped if any(p not in dropped for p in partners.get(d, ())))
    resolved = sum(1 for a, b in truth if a in dropped or b in dropped)
    return represented / max(len(dropped), 1), resolved / max(len(truth), 1)


def compare_near(corpus: Corpus, work: Path, tok) -> dict[str, Any]:
    from llm_modules.data.prepare.config import NearDuplicateConfig
    from llm_modules.data.prepare.minhash import choose_bands

    nd = NearDuplicateConfig()
    bands, rows = choose_bands(nd.threshold, nd.num_perm)
    ours, t_ours = ours_dedup(corpus, work / "ours-near", "near_duplicate")
    n = len(corpus.texts)
    shingles = Shingles(corpus.texts)
    results: dict[str, Any] = {"ours_bands_rows": [bands, rows]}
    table = []
    configs = [(bands, rows), (14, 8)]
    if sum(map(len, corpus.texts)) > MAX_SECOND_MINHASH:  # each run costs ~3 s per MB here
        configs = configs[:1]
        print(f"\n(datatrove MinHash at its default 14x8 skipped on {corpus.name}: over "
              f"{MAX_SECOND_MINHASH / 1e6:g} MB)")
    for b, r in configs:
        theirs, pairs, signer, t_theirs = datatrove_minhash(corpus, work, b, r, tok)
        row = {**split(n, ours, theirs), "ours_s": t_ours, "theirs_s": t_theirs}
        if corpus.truth is not None:
            row["precision_ours"], row["recall_ours"] = pr(ours, corpus.truth)
            row["precision_theirs"], row["recall_theirs"] = pr(theirs, corpus.truth)
        label = f"datatrove MinHash {b}x{r}" + (" (= ours)" if (b, r) == (bands, rows) else " (its default)")
        table.append((label, row))
        results[f"{b}x{r}"] = row
        if (b, r) == (bands, rows):
            first = (theirs, pairs, signer)
    if corpus.truth is not None:
        results["truth_pairs"] = len(corpus.truth)
    print_table(f"{corpus.name}: MinHash near-duplicate dedup (5-word shingles, threshold {nd.threshold})", table)
    if corpus.truth is not None:
        print(f"  truth: {len(corpus.truth)} pairs with word 5-gram Jaccard >= {nd.threshold}")
    theirs, pairs, signer = first
    print(f"  differences below: ours against datatrove at {bands}x{rows}")

    def their_j(i: int, j: int) -> float:
        a = set(signer.get_shingles(corpus.texts[i]).ravel().tolist())
        b = set(signer.get_shingles(corpus.texts[j]).ravel().tolist())
        return jaccard(a, b)

    def reason(i: int) -> tuple[str, str]:
        """(category, explanation) of one document that only one side drops."""
        t = nd.threshold
        if i in theirs:  # only theirs drops it
            partners = sorted(pairs.get(i, ()))
            swapped = [j for j in partners if j in ours and j not in theirs]
            if swapped:
                return ("same group, the other side kept another member",
                        f"theirs keeps {corpus.ids[swapped[0]]}, which ours drops (union-find root vs keep-first)")
            if not partners:
                return ("theirs: union-find group only", "no bucket pair of its own: dropped through its group")
            jmax, j = max((shingles.pair(i, k), k) for k in partners)
            if jmax >= t and j not in ours:
                return ("theirs finds a true pair ours missed",
                        f"true J={jmax:.2f} with {corpus.ids[j]}, both kept by ours (our estimate or bands fell short)")
            if jmax >= t:
                return ("theirs drops the whole group",
                        f"true J={jmax:.2f} with {corpus.ids[j]}, which ours drops as this one's copy; theirs drops "
                        "both and keeps another member of the union-find group")
            tj = their_j(i, j)
            if tj >= t:
                return ("tokenization/normalization",
                        f"J={jmax:.2f} with {corpus.ids[j]} on our words, {tj:.2f} on theirs (digits -> 0, "
                        "punctuation removed, spaCy tokens)")
            return ("theirs: band collision below the threshold, no Jaccard check",
                    f"shares a band with {corpus.ids[j]} at true J={jmax:.2f} (theirs {tj:.2f}) < {t}")
        j, jmax = shingles.best(i)
        if j < 0:
            return "ours: no document shares a 5-gram", "no document shares a 5-gram with it"
        if j in theirs and j not in ours:
            return ("same group, the other side kept another member",
                    f"ours keeps {corpus.ids[j]} (J={jmax:.2f}), which theirs drops (keep-first vs union-find root)")
        if len(signer.get_shingles(corpus.texts[i])) == 0:
            return ("theirs: under 5 tokens, no signature",
                    "fewer than 5 words on their tokenization: datatrove gives it no signature")
        if jmax < t:
            return ("ours: estimate at or above the threshold, true J below",
                    f"best true J={jmax:.2f} with {corpus.ids[j]} < {t}: our signature estimate reached {t}")
        tj = their_j(i, j)
        if tj < t:
            return ("tokenization/normalization",
                    f"J={jmax:.2f} with {corpus.ids[j]} on our words, {tj:.2f} on theirs")
        p = 1 - (1 - tj ** rows) ** bands
        return ("theirs: LSH missed a true pair",
                f"true J={jmax:.2f} with {corpus.ids[j]} (theirs {tj:.2f}): no shared band "
                f"(chance to share one at that J: {p:.3f})")

    diffs = print_diffs(corpus, "only ours", list(ours - theirs), reason)
    diffs += print_diffs(corpus, "only theirs", list(theirs - ours), reason)
    results["differences_by_reason"] = tally(corpus, ours ^ theirs, reason)
    results["examples"] = diffs
    return results


# ---- main ---------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    try:
        import datatrove  # noqa: F401
        import spacy  # noqa: F401
    except ImportError as err:
        print(f"benchmarks/prepare_datatrove_steps.py: {err.name} is not installed; pip install datatrove spacy",
              file=sys.stderr)
        return 2
    tok = shared_tokenizer()
    results: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}}
    if Path("/proc/loadavg").exists():
        print(f"load average: {Path('/proc/loadavg').read_text().strip()}")
    with xxhash_str_shim() as note, tempfile.TemporaryDirectory(prefix="dt-steps-") as tmp:
        if note:
            print(f"note: {note}")
            results["note"] = note
        root = Path(tmp)
        builders = [
            lambda: tutorial_corpus(root / "tutorial"),
            lambda: generated_corpus(root / "generated", args.size_mb, args.seed),
            lambda: planted_corpus(root / "planted-src", args.families, args.unrelated, args.words, args.seed),
        ]
        for build in builders:
            t = time.perf_counter()
            corpus = load(build())
            mb = sum(len(x.encode("utf-8")) for x in corpus.texts) / 1e6
            print(f"\n######## corpus {corpus.name}: {len(corpus.texts)} documents, {mb:.1f} MB "
                  f"(built in {time.perf_counter() - t:.1f} s)")
            work = root / f"work-{corpus.name}"
            entry: dict[str, Any] = {"documents": len(corpus.texts), "mb": mb}
            entry["filters"] = compare_filters(corpus, tok)
            entry["exact"] = compare_exact(corpus, work)
            entry["near"] = compare_near(corpus, work, tok)
            tok.cache.clear()
            results[corpus.name] = entry
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
