"""``data prepare`` stages on crafted corpora whose outcome is known exactly: each quality rule firing
and not, exact and near duplicates, PII of each kind (and look-alikes left alone), decontamination at
13 words but not 12, the report's attribution and counts, and the building blocks (hashes, MinHash).

Resume, refusals and the CLI: test_prepare_resume.py; prepared outputs as training data:
test_prepare_data.py. Helpers here are imported by both.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from llm_modules.data.prepare import PrepareConfig, format_table, prepare
from llm_modules.data.prepare import words as W
from llm_modules.data.prepare.config import RULES, PIIConfig, from_dict
from llm_modules.data.prepare.filters import Doc, build_rules
from llm_modules.data.prepare.minhash import LSHIndex, MinHasher, choose_bands
from llm_modules.data.prepare.pii import Scrubber, luhn_ok
from llm_modules.registry import ConfigError

# ---- helpers (imported by the other test_prepare_* files) -------------------------------------------------

_SYLLABLES = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]


def vocabulary(size: int = 4000, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    out: set[str] = set()
    while len(out) < size:
        out.add("".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 4))))
    return sorted(out)


VOCAB = vocabulary()


def prose(rng: random.Random, n_words: int, per_line: int = 12) -> str:
    """Random words from a large vocabulary in lines of ``per_line``: passes every quality rule."""
    words = [rng.choice(VOCAB) for _ in range(n_words)]
    lines = [" ".join(words[i:i + per_line]) + "." for i in range(0, n_words, per_line)]
    return "\n".join(line[0].upper() + line[1:] for line in lines)


def change_words(text: str, k: int, rng: random.Random) -> str:
    words = text.split(" ")
    for i in rng.sample(range(len(words)), k):
        words[i] = "zzchanged" + str(i)
    return " ".join(words)


def write_jsonl(path: Path, texts: list[str], field: str = "text") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({field: t}) + "\n" for t in texts), encoding="utf-8")
    return path


def read_shards(out: Path) -> list[dict]:
    manifest = json.loads((out / "prepare-manifest.json").read_text())
    rows = []
    for shard in manifest["shards"]:
        rows += [json.loads(line) for line in (out / shard["name"]).read_text(encoding="utf-8").splitlines()]
    return rows


def dropped(report: dict) -> dict[str, int]:
    """rule -> documents dropped, only the rules that dropped something."""
    return {rule: d["documents"] for rule, d in report["dropped"].items() if d["documents"]}


def run(tmp_path: Path, texts: list[str], name: str = "out", **settings) -> tuple[dict, list[dict]]:
    """Prepare ``texts`` (one JSONL file) with ``settings`` (a nested dict) and return (report, rows)."""
    src = write_jsonl(tmp_path / f"{name}-in" / "docs.jsonl", texts)
    config = from_dict({"inputs": [str(src)], "out": str(tmp_path / name), **settings})
    report = prepare(config, progress=False)
    return report, read_shards(tmp_path / name)


def check_sums(report: dict) -> None:
    """Every input document is either kept or charged to exactly one rule."""
    docs = sum(d["documents"] for d in report["dropped"].values())
    assert report["input"]["documents"] == report["kept"]["documents"] + docs


# ---- quality rules, one by one ----------------------------------------------------------------------------


def _rule(name: str, **settings):
    filters = from_dict({"filters": {name: settings}} if settings else {}).filters
    return {r.name: r for r in build_rules(filters)}[name]


def _with_inserts(rng, base_words: int, insert: str, times: int) -> str:
    words = [rng.choice(VOCAB) for _ in range(base_words)]
    for _ in range(times):
        words.insert(rng.randrange(len(words)), insert)
    return "\n".join(" ".join(words[i:i + 12]) for i in range(0, len(words), 12))


def rule_cases():
    rng = random.Random(3)
    hashtags = " ".join(f"{w} #{rng.choice(VOCAB)}" if i % 6 == 0 else w
                        for i, w in enumerate(rng.choice(VOCAB) for _ in range(100)))  # 17 '#' / 117 words
    dotted = " ".join(w + ("..." if i % 25 == 0 else "") for i, w in enumerate(rng.choice(VOCAB) for _ in range(100)))
    repeated_line = rng.choice(VOCAB) + " " + rng.choice(VOCAB) + " " + rng.choice(VOCAB)
    lines = prose(rng, 120).split("\n")  # 10 lines
    dup_lines = "\n".join(lines + [repeated_line] * 6)  # 5 repeats of 16 lines: 0.31
    ok_lines = "\n".join(lines + [repeated_line] * 4)  # 3 of 14 lines: 0.21, chars 0.06
    passage = " ".join(rng.choice(VOCAB) for _ in range(12))
    return {
        "length": (prose(rng, 30), prose(rng, 60)),
        "symbol_ratio": (hashtags, dotted),
        "boilerplate": (prose(rng, 60) + "\nPlease enable JavaScript to view the comments.",
                        prose(rng, 60) + "\nJavaScript examples follow."),
        "duplicate_lines": (dup_lines, ok_lines),
        "top_ngrams": (_with_inserts(rng, 100, "big data", 30), _with_inserts(rng, 100, "big data", 8)),
        "duplicate_ngrams": (_with_inserts(rng, 100, passage, 3), _with_inserts(rng, 150, passage, 2)),
    }


CASES = rule_cases()


@pytest.mark.parametrize("name", list(CASES))
def test_each_rule_fires_on_its_junk_and_not_on_clean_text(name):
    bad, good = CASES[name]
    rule = _rule(name)
    assert rule.drops(Doc(bad)), f"{name} should drop its junk document"
    assert not rule.drops(Doc(good)), f"{name} should keep the clean document"
    for other, (_, clean) in CASES.items():  # clean documents pass every rule
        assert not _rule(other).drops(Doc(clean)), f"{other} dropped the clean document of {name}"


def test_rule_thresholds_are_settings():
    rng = random.Random(4)
    assert not _rule("length", min_words=20).drops(Doc(prose(rng, 30)))
    assert _rule("length", min_words=None, max_chars=100).drops(Doc(prose(rng, 30)))
    assert _rule("length", min_words=None, min_chars=10_000).drops(Doc(prose(rng, 30)))
    assert not _rule("symbol_ratio", max_ratio=0.2).drops(Doc(CASES["symbol_ratio"][0]))
    assert not _rule("duplicate_lines", max_line_share=0.5, max_char_share=None).drops(Doc(CASES["duplicate_lines"][0]))
    assert _rule("duplicate_lines", max_line_share=None, max_char_share=0.05).drops(Doc(CASES["duplicate_lines"][1]))
    # one matching line of 6 lines: the share rule keeps it at 0.2, drops it at 0.1
    text = CASES["boilerplate"][0]
    assert not _rule("boilerplate", max_line_share=0.2).drops(Doc(text))
    assert _rule("boilerplate", max_line_share=0.1).drops(Doc(text))
    assert _rule("boilerplate", patterns=["all rights reserved"]).drops(Doc(prose(rng, 60) + "\nAll Rights Reserved"))
    assert not _rule("top_ngrams", thresholds={2: 0.5}).drops(Doc(CASES["top_ngrams"][0]))
    assert not _rule("duplicate_ngrams", thresholds={5: 0.5}).drops(Doc(CASES["duplicate_ngrams"][0]))


def test_pipeline_charges_each_document_to_the_first_rule_that_fires(tmp_path):
    rng = random.Random(5)
    clean = [prose(rng, 80) for _ in range(4)]
    junk = [bad for bad, _ in CASES.values()]
    short_with_hashes = "#a #b #c #d #e #f"  # too short AND too many symbols: charged to length
    texts = [clean[0], *junk, "   \n\t ", clean[1], short_with_hashes, clean[2], clean[3]]
    report, rows = run(tmp_path, texts)
    assert dropped(report) == {"empty": 1, "length": 2, "symbol_ratio": 1, "boilerplate": 1, "duplicate_lines": 1,
                               "top_ngrams": 1, "duplicate_ngrams": 1}
    assert [r["text"] for r in rows] == clean
    assert report["dropped"]["length"]["characters"] == len(junk[0]) + len(short_with_hashes)
    assert report["kept"] == {"documents": 4, "characters": sum(map(len, clean)),
                              "bytes": sum(len(t.encode()) for t in clean)}
    assert report["input"]["characters"] == sum(map(len, texts))
    check_sums(report)
    assert list(report["dropped"]) == list(RULES)


def test_disabled_rules_keep_what_they_would_drop(tmp_path):
    rng = random.Random(6)
    texts = [prose(rng, 30), CASES["symbol_ratio"][0]]
    report, _rows = run(tmp_path, texts, filters={"length": {"enabled": False}, "symbol_ratio": {"enabled": False}})
    assert report["kept"]["documents"] == 2 and not dropped(report)
    assert report["dropped"]["length"]["active"] is False
    table = format_table(report)
    assert "length" in table and "(off)" in table


# ---- normalisation and exact duplicates -------------------------------------------------------------------


def test_exact_duplicates_after_normalisation_keep_the_first(tmp_path):
    rng = random.Random(8)
    a, b, c = (prose(rng, 60) for _ in range(3))
    texts = [a, b, a.replace("\n", "\r\n"), "  " + b + "\n\n", c, a]
    report, rows = run(tmp_path, texts)
    assert [r["text"] for r in rows] == [a, b, c]
    assert [r["source_id"].rsplit("#", 1)[1] for r in rows] == ["1", "2", "5"]  # JSONL line numbers
    assert dropped(report) == {"exact_duplicate": 3}
    assert report["dropped"]["exact_duplicate"]["characters"] == len(a) + len(a) + a.count("\n") + len(b) + 4


def test_nfkc_is_optional(tmp_path):
    rng = random.Random(9)
    text = prose(rng, 60) + " \uff21\uff22\uff23 \ufb01le"  # full-width ABC, the fi ligature
    _plain, rows = run(tmp_path, [text], name="plain")
    assert rows[0]["text"] == text
    _folded, rows = run(tmp_path, [text], name="nfkc", normalize={"nfkc": True})
    assert rows[0]["text"].endswith(" ABC file")


# ---- near duplicates --------------------------------------------------------------------------------------


def test_near_duplicates_are_dropped_and_unrelated_documents_kept(tmp_path):
    rng = random.Random(10)
    originals = [prose(rng, 300) for _ in range(5)]
    near = [change_words(originals[0], 3, rng), change_words(originals[3], 4, rng)]
    half = originals[1][: len(originals[1]) // 2] + "\n" + prose(rng, 150)  # Jaccard about 1/3: kept
    texts = originals[:2] + [near[0]] + originals[2:] + [half, near[1]]
    report, rows = run(tmp_path, texts)
    assert dropped(report) == {"near_duplicate": 2}
    assert [r["text"] for r in rows] == originals + [half]
    off, rows = run(tmp_path, texts, name="off", near_duplicate={"enabled": False})
    assert off["kept"]["documents"] == 8


def test_minhash_estimates_jaccard_and_bands_follow_the_threshold():
    assert choose_bands(0.8, 128) == (9, 13)
    assert choose_bands(0.5, 128)[0] > choose_bands(0.9, 128)[0]  # a lower threshold needs more bands
    rng = random.Random(11)
    base = [rng.choice(VOCAB) for _ in range(2000)]
    other = list(base)
    for i in rng.sample(range(2000), 100):
        other[i] = "zz" + str(i)
    mh = MinHasher(num_perm=256, ngram=5, seed=3)
    ha, hb = W.word_hashes(" ".join(base))[0], W.word_hashes(" ".join(other))[0]
    sa, sb = set(W.ngram_hashes(ha, 5).tolist()), set(W.ngram_hashes(hb, 5).tolist())
    true = len(sa & sb) / len(sa | sb)
    estimate = float((mh.signature(ha) == mh.signature(hb)).mean())
    assert abs(estimate - true) < 0.08
    index = LSHIndex(256, threshold=0.3)
    index.add(mh.signature(ha))
    assert index.is_duplicate(mh.signature(hb))
    assert not LSHIndex(256, threshold=0.95, verify=True).is_duplicate(mh.signature(hb))
    assert mh.signature(np.empty(0, dtype=np.uint64)) is None


def test_hashes_are_pinned():
    """Resume and --workers rely on hashes that do not change with the process, the machine or the
    release (no salted hash()): these values are fixed; changing them invalidates every checkpoint."""
    here = W.word_hashes("Hello, wörld hello")[0].tolist()
    assert here == [16800513211215748231, 1665075013060346457, 16800513211215748231]
    assert W.ngram_hashes(W.word_hashes("a b c d e f")[0], 5).tolist() == [8438992743893883015, 15284392047758029912]
    assert W.words("Hello, wörld hello") == ["hello", "wörld", "hello"]
    ascii_h = W.word_hashes("alpha beta")[0]
    mixed_h = W.word_hashes("alpha beta \u00e9t\u00e9")[0]
    assert ascii_h.tolist() == mixed_h[:2].tolist()  # the ASCII fast path and the regex path agree


# ---- PII ------------------------------------------------------------------------------------------------


SCRUB = [
    ("Write to john.doe@example.com or jane+news@mail.co.uk today.",
     "Write to <EMAIL> or <EMAIL> today.", {"email": 2}),
    ("Call +1 415 555 2671, +44 20 7946 0958 or +49 (30) 1234567.",
     "Call <PHONE>, <PHONE> or <PHONE>.", {"phone": 3}),
    ("US (555) 123-4567, 555-123-4567, 555.123.4567 and 555 123 4567.",
     "US <PHONE>, <PHONE>, <PHONE> and <PHONE>.", {"phone": 4}),
    ("FR 06 12 34 56 78, DE 030 1234567, UK 020 7946 0958.",
     "FR <PHONE>, DE <PHONE>, UK <PHONE>.", {"phone": 3}),
    ("Pay with 4111 1111 1111 1111 or 4111-1111-1111-1111 or 378282246310005.",
     "Pay with <CARD_NUMBER> or <CARD_NUMBER> or <CARD_NUMBER>.", {"card_number": 3}),
    ("Hosts 192.168.1.10 and 10.0.0.1, gateway 255.255.255.0.",
     "Hosts <IP_ADDRESS> and <IP_ADDRESS>, gateway <IP_ADDRESS>.", {"ip_address": 3}),
    ("IPv6 2001:db8::8a2e:370:7334, fe80::1 and 2001:0db8:85a3:0000:0000:8a2e:0370:7334.",
     "IPv6 <IP_ADDRESS>, <IP_ADDRESS> and <IP_ADDRESS>.", {"ip_address": 3}),
    ("Mixed: card 5555 5555 5555 4444, mail ops@corp.example.org, ip 8.8.8.8, tel +33 6 12 34 56 78.",
     "Mixed: card <CARD_NUMBER>, mail <EMAIL>, ip <IP_ADDRESS>, tel <PHONE>.",
     {"card_number": 1, "email": 1, "ip_address": 1, "phone": 1}),
]

UNTOUCHED = [
    "In 1999 and 2024 the price was $1,234.56 or 3.14159 for 42 items.",
    "Dates 2024-01-15, 01.02.2023 and 15/01/2024; id 12345678; plain 1234567890.",
    "Versions 1.2.3, 1.2.3.4.5 and v1.2.3.4; not an address: 256.1.1.1.",
    "Luhn-invalid 4111 1111 1111 1112 and 1234567890123456.",
    "Code: Foo::bar, a[1::2], x[10::20], 12:30:45, 00:1A:2B:3C:4D:5E, std::vector, ::1.",
    "Decorators @property and @staticmethod, a handle @someone, and a@b.",
]


@pytest.mark.parametrize("text,expected,counts", SCRUB, ids=[s[0].split()[0] for s in SCRUB])
def test_pii_is_replaced_by_tags(text, expected, counts):
    assert Scrubber(PIIConfig())(text) == (expected, counts)


@pytest.mark.parametrize("text", UNTOUCHED)
def test_pii_look_alikes_are_left_alone(text):
    assert Scrubber(PIIConfig())(text) == (text, {})


def test_pii_choices():
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")
    # a four-part version is a valid IPv4 address: scrubbed (see the pii module's docstring)
    assert Scrubber(PIIConfig())("release 1.2.3.4 today")[0] == "release <IP_ADDRESS> today"
    only_email = Scrubber(PIIConfig(kinds=["email"], tags={"email": "[mail]"}))
    assert only_email("a@example.com +1 415 555 2671") == ("[mail] +1 415 555 2671", {"email": 1})


def test_pii_counts_in_the_report(tmp_path):
    rng = random.Random(12)
    texts = [prose(rng, 60) + "\n" + text for text, _, _ in SCRUB] + [prose(rng, 60) + "\n" + t for t in UNTOUCHED]
    report, rows = run(tmp_path, texts)
    assert report["pii_replacements"] == {"email": 3, "phone": 11, "ip_address": 7, "card_number": 4}
    assert [r["text"].rsplit("\n", 1)[1] for r in rows] == [e for _, e, _ in SCRUB] + UNTOUCHED
    # two documents that differ only in an address are duplicates once scrubbed
    a = prose(rng, 60)
    report, rows = run(tmp_path, [a + " mail x@example.com", a + " mail y@example.org"], name="dedup")
    assert dropped(report) == {"exact_duplicate": 1} and report["pii_replacements"]["email"] == 1
    _off, rows = run(tmp_path, [SCRUB[0][0] + " " + prose(rng, 60)], name="off", pii={"enabled": False})
    assert rows[0]["text"].startswith(SCRUB[0][0])


# ---- decontamination -------------------------------------------------------------------------------------


def test_decontamination_drops_13_word_overlaps_not_12(tmp_path):
    rng = random.Random(13)
    eval_text = prose(rng, 40)
    eval_words = W.words(eval_text)
    write_jsonl(tmp_path / "eval" / "test.jsonl", [eval_text], field="question")
    shared13 = " ".join(w.upper() for w in eval_words[5:18])  # other case, no punctuation: same words
    shared12 = " ".join(eval_words[5:17])
    contaminated = prose(rng, 40) + " " + shared13 + ", " + prose(rng, 40)
    clean = prose(rng, 40) + " " + shared12 + " " + prose(rng, 40)
    texts = [clean, contaminated, prose(rng, 80)]
    settings = {"decontamination": {"eval_paths": [str(tmp_path / "eval" / "test.jsonl")], "text_field": "question"}}
    report, rows = run(tmp_path, texts, **settings)
    assert dropped(report) == {"decontamination": 1}
    assert [r["text"] for r in rows] == [clean, texts[2]]
    report, rows = run(tmp_path, texts, name="n12", decontamination={**settings["decontamination"], "ngram": 12})
    assert dropped(report) == {"decontamination": 2}


def test_contaminated_documents_do_not_shadow_clean_near_copies(tmp_path):
    """Decontamination runs before near duplicates: a contaminated first copy is not indexed, so a
    clean near copy of it (the contaminated passage edited out) is kept, not lost as its duplicate."""
    rng = random.Random(14)
    eval_text = prose(rng, 30)
    write_jsonl(tmp_path / "eval.jsonl", [eval_text])
    body = prose(rng, 400)
    contaminated = body + "\n" + eval_text
    clean_copy = body
    report, rows = run(tmp_path, [contaminated, clean_copy],
                       decontamination={"eval_paths": [str(tmp_path / "eval.jsonl")]})
    assert dropped(report) == {"decontamination": 1}
    assert [r["text"] for r in rows] == [clean_copy]


# ---- config errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("settings,message", [
    ({"filters": {"symbol_ratio": {"max_ratio": -0.5}}}, r"filters\.symbol_ratio\.max_ratio=-0\.5 must be 0 or more"),
    ({"near_duplicate": {"threshold": 1.5}}, r"near_duplicate\.threshold=1\.5 must be in \(0, 1\]"),
    ({"filters": {"duplicate_lines": {"max_line_share": 2}}}, r"max_line_share=2\.0 must be in \[0, 1\]"),
    ({"filters": {"top_ngrams": {"thresholds": {"two": 0.2}}}}, r"key 'two' is not a whole number"),
    ({"filters": {"lenght": {}}}, r"filters\.lenght: unknown setting \(did you mean 'length'\?\)"),
    ({"near_duplicate": {"bands": 20, "rows": 10}}, r"bands x rows = 200 exceeds num_perm=128"),
    ({"near_duplicate": {"bands": 20}}, r"bands and near_duplicate\.rows go together"),
    ({"filters": {"length": {"min_words": 10, "max_words": 5}}}, r"min_words=10 is larger than"),
    ({"filters": {"boilerplate": {"patterns": ["("]}}}, r"patterns\[0\]='\(' is not a valid regular expression"),
    ({"filters": {"boilerplate": {"patterns": ["Cookie"]}}}, r"write it in lower case"),
    ({"pii": {"kinds": ["emails"]}}, r"unknown kind 'emails' \(did you mean 'email'\?\)"),
    ({"workers": 0}, r"workers=0 must be at least 1"),
    ({"filters": {"length": {"min_words": "many"}}}, r"filters\.length\.min_words='many': expected a whole number"),
])
def test_bad_settings_name_the_field(settings, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(settings).validate()


def test_unknown_rule_to_disable():
    with pytest.raises(ConfigError, match=r"unknown rule 'near_dup' \(did you mean 'near_duplicate'\?\)"):
        PrepareConfig().disable("near_dup")


def test_bad_inputs_name_the_entry(tmp_path):
    with pytest.raises(ConfigError, match=r"inputs\[0\]: .*missing.* does not exist"):
        prepare(PrepareConfig(inputs=[str(tmp_path / "missing")], out=str(tmp_path / "o")), progress=False)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{not json}\n')
    with pytest.raises(ConfigError, match=r"inputs\[0\]: .*bad\.jsonl' line 2 is not valid JSON"):
        prepare(PrepareConfig(inputs=[str(bad)], out=str(tmp_path / "o2")), progress=False)
    with pytest.raises(ConfigError, match=r"decontamination\.eval_paths\[0\]: .*nope.* does not exist"):
        prepare(PrepareConfig(inputs=[str(tmp_path / "bad.jsonl")], out=str(tmp_path / "o3"),
                              decontamination=from_dict({"decontamination": {"eval_paths": ["nope"]}}).decontamination),
                progress=False)


def test_band_keys_of_many_signatures_equal_one_at_a_time():
    rng = np.random.default_rng(0)
    index = LSHIndex(128, 0.8)
    sigs = rng.integers(0, 2**32 - 5, size=(7, 128), dtype=np.uint64).astype(np.uint32)
    many = index.band_keys_of(sigs)
    assert many.shape == (7, index.bands)
    assert [row.tolist() for row in many] == [index.band_keys(s) for s in sigs]
