"""Bad training data: binary files, text in another encoding, NUL characters, a preparation that keeps
nothing, and a file that is one enormous line. Each is either refused/skipped with one line naming the
file and the count, or handled with bounded memory; none passes silently.

Prepare's binary filter: tests here; fit's reading (sources) and the long-line memory bound: below.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

from test_prepare import prose

from llm_modules.cli import main
from llm_modules.data.prepare import from_dict, prepare
from llm_modules.data.prepare.config import FILTER_RULES
from llm_modules.data.prepare.filters import Doc, build_rules


def _binary_rule(**settings):
    rules = build_rules(from_dict({"filters": {"binary": settings}} if settings else {}).filters)
    return {r.name: r for r in rules}["binary"]


def _inputs(root: Path) -> dict[str, str]:
    """Files of every kind, each with a clean-enough body (passes every other rule); name -> expected fate."""
    rng = random.Random(11)
    root.mkdir(parents=True, exist_ok=True)
    (root / "clean.txt").write_text(prose(rng, 80), encoding="utf-8")
    body = prose(rng, 80)
    (root / "one_bad_byte.txt").write_bytes(body.encode() + b" \xff end.")  # 1 in ~600 characters: kept
    (root / "random.txt").write_bytes(bytes(b or 1 for b in random.Random(1).randbytes(6000)))  # no NUL
    (root / "nul.txt").write_text(prose(rng, 80) + "\x00", encoding="utf-8")
    accented = " ".join(w.replace("a", "\u00e9") for w in prose(rng, 80).split(" "))  # every 'a' an e-acute
    (root / "latin1.txt").write_bytes(accented.encode("latin-1"))  # each \xe9 undecodable as UTF-8
    return {"clean": "kept", "one_bad_byte": "kept", "random": "binary", "nul": "binary", "latin1": "binary"}


def test_binary_rule_drops_nul_and_undecodable_text_and_its_thresholds_are_settings():
    rng = random.Random(2)
    text = prose(rng, 100)
    rule = _binary_rule()
    assert rule.name == FILTER_RULES[0] == "binary"  # first: later rules would measure junk as words
    assert not rule.drops(Doc(text))
    assert not rule.drops(Doc(text + "\t\f\v\r\n" + "\ufffd"))  # whitespace controls and one bad char pass
    assert rule.drops(Doc(text + "\x00"))
    junk = "\ufffd\x01\x1b" * (len(text) // 200 + 1)  # a bit over 1% of the characters
    assert rule.drops(Doc(text + junk))
    assert not _binary_rule(max_bad_share=0.05).drops(Doc(text + junk))
    assert not _binary_rule(drop_nul=False).drops(Doc(text + "\x00"))


def test_prepare_drops_binary_and_wrongly_encoded_files_and_counts_them(tmp_path, capsys):
    fates = _inputs(tmp_path / "in")
    out = tmp_path / "out"
    assert main(["data", "prepare", str(tmp_path / "in"), "--out", str(out), "--no-progress"]) == 0
    table = capsys.readouterr().out
    assert re.search(r"^  binary\s+3\s", table, re.MULTILINE), table
    report = json.loads((out / "report.json").read_text())
    assert report["dropped"]["binary"]["documents"] == 3
    assert report["kept"]["documents"] == 2 and report["warnings"] == []
    kept = [json.loads(line)["source_id"] for shard in sorted(out.glob("*.jsonl")) for line in shard.open()]
    assert sorted(Path(s).stem for s in kept) == sorted(k for k, v in fates.items() if v == "kept")
    # --disable binary lets them through to the other rules (random bytes are not words: length drops them)
    report = prepare(from_dict({"inputs": [str(tmp_path / "in")], "out": str(tmp_path / "off"),
                                "filters": {"binary": {"enabled": False}}}), progress=False)
    assert report["dropped"]["binary"] == {"documents": 0, "characters": 0, "active": False}
    assert report["kept"]["documents"] > 2


def test_prepare_that_keeps_nothing_warns_naming_the_rules(tmp_path, capsys):
    rng = random.Random(3)
    src = tmp_path / "in"
    src.mkdir()
    for i in range(3):
        (src / f"short{i}.txt").write_text(prose(rng, 10))
    (src / "blob.txt").write_bytes(b"\x00\x01\x02" * 100)
    out = tmp_path / "out"
    assert main(["data", "prepare", str(src), "--out", str(out), "--no-progress"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("llm-modules data prepare: warning: 0 of 4 input documents kept: all were dropped by "
                             "length 3, binary 1;"), err[0]
    assert "--disable length,binary" in err[0]
    # a rerun finds the preparation complete and still says so
    assert main(["data", "prepare", str(src), "--out", str(out), "--no-progress"]) == 0
    assert "0 of 4 input documents kept" in capsys.readouterr().err


# ---- fit: reading sources ------------------------------------------------------------------------------


def _tokenizer(text: str):
    from llm_modules.data.tokenizer import Tokenizer

    return Tokenizer.train(iter([text]), vocab_size=400, num_sentinels=4)


def test_fit_skips_a_binary_file_and_names_files_with_replaced_bytes(tmp_path, caplog):
    from llm_modules.data.datamodule import TextDataModule

    _inputs(tmp_path / "in")  # clean, one_bad_byte, random (binary), nul (binary: NUL), latin1 (decodable)
    (tmp_path / "in" / "nul.txt").unlink()
    (tmp_path / "in" / "blob.txt").write_bytes(b"PK\x03\x04" + random.Random(5).randbytes(3000) + b"\x00")
    dm = TextDataModule(paths=[str(tmp_path / "in")], cache_dir=str(tmp_path / "cache"), train_tokenizer=True,
                        vocab_size=400, num_sentinels=4, seq_len=16, batch_size=2, val_fraction=0.0)
    with caplog.at_level("WARNING", logger="llm_modules.data.sources"):
        dm.prepare_data()
        dm.setup("fit")
    lines = [r.getMessage() for r in caplog.records if r.name == "llm_modules.data.sources"]
    skipped = [line for line in lines if "skipped" in line]
    replaced = [line for line in lines if "replaced by U+FFFD" in line]
    assert len(skipped) == 2 and len(replaced) == 2, lines  # once each, though read by tokenizer and cache
    assert any("random.txt" in line and "undecodable or control" in line for line in skipped)
    assert any("blob.txt" in line and "NUL bytes" in line for line in skipped)
    latin1 = (tmp_path / "in" / "latin1.txt").read_bytes().count(b"\xe9")
    assert any(f"latin1.txt' is not valid UTF-8: {latin1:,} undecodable" in line for line in replaced)
    assert any("one_bad_byte.txt' is not valid UTF-8: 1 undecodable" in line for line in replaced)
    assert all(line.startswith("data.paths[0]: ") for line in lines)
    kept = sorted(Path(s).name for s in dm._sources[0].cache.source_ids)
    assert kept == ["clean.txt", "latin1.txt", "one_bad_byte.txt"]


def test_document_lines_join_to_the_text_and_cut_long_lines_before_a_space():
    from llm_modules.data.text_reading import document_lines

    text = "short\n" + "word " * 50 + "tail\n\n" + "x" * 70 + "\nend"
    parts = [text[i:i + 7] for i in range(0, len(text), 7)]
    lines = list(document_lines(parts, max_chars=32))
    assert "".join(lines) == text
    assert max(map(len, lines)) <= 32
    assert lines[0] == "short\n" and lines[-1] == "end"
    for a, b in zip(lines, lines[1:]):
        if not a.endswith("\n") and b.startswith(" "):
            assert not a[-1].isspace()  # cut before a space that follows a word
    assert ["x" * 32, "x" * 32, "x" * 6 + "\n"] == [line for line in lines if line.startswith("x")]


def test_a_long_line_is_cached_as_the_ids_of_the_whole_line(tmp_path):
    from llm_modules.data.sources import resolve_paths
    from llm_modules.data.text_reading import MAX_LINE_CHARS
    from llm_modules.data.token_cache import build_token_cache

    rng = random.Random(8)
    line = " ".join(prose(rng, 400).split("\n")) + "  double  spaces,\tand tabs"
    line = (line + " ") * (3 * MAX_LINE_CHARS // len(line) + 1)  # several pieces
    (tmp_path / "long.txt").write_text("first line\n" + line + "\nlast", encoding="utf-8")
    tok = _tokenizer(line[:20_000])
    assert tok.spaces_encode_independently and tok.lines_encode_independently
    cache = build_token_cache(resolve_paths([str(tmp_path / "long.txt")]), tok, tmp_path / "cache")
    text = (tmp_path / "long.txt").read_text(encoding="utf-8")
    assert cache.num_documents == 1
    assert list(cache.document(0)) == tok.encode(text)
    assert cache.num_bytes == len(text.encode())


_PEAK = r"""
import os, resource, sys
from pathlib import Path
from llm_modules.data import token_cache
from llm_modules.data.sources import resolve_paths
from llm_modules.data.tokenizer import Tokenizer
token_cache._BATCH_CHARS = 1_000_000  # both sizes below fill several batches
path = Path(sys.argv[1])
tok = Tokenizer.train(iter([path.open(encoding="utf-8").read(200_000)]), vocab_size=400, num_sentinels=4)
with open("/proc/self/statm") as f:
    before = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
token_cache.build_token_cache(resolve_paths([str(path)]), tok, sys.argv[2])
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before)
"""


def _cache_peak(path: Path, cache: Path) -> int:
    """Bytes the token cache build of ``path`` adds to its process's peak RSS, in a fresh process."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _PEAK, str(path), str(cache)], capture_output=True, text=True,
                         timeout=300, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    return int(out.stdout.split()[-1])


def test_memory_of_caching_a_single_line_file_does_not_grow_with_the_line(tmp_path):
    """A file that is one long line: the memory the cache build adds must not depend on its length.
    Measured at 2 MB and 8 MB: reading or encoding the line whole costs tens of bytes per byte, so
    6 MB more would add hundreds of MB; streamed, both runs hold the same batch, and the difference is
    allocator noise. The bound: under 1 byte per added input byte."""
    rng = random.Random(9)
    words = " ".join(prose(rng, 20_000).split("\n")) + " "
    sizes = {}
    for mb in (2, 8):
        path = tmp_path / f"line{mb}.txt"
        n = mb * 1_000_000
        path.write_text((words * (n // len(words) + 1))[:n], encoding="utf-8")
        sizes[mb] = _cache_peak(path, tmp_path / f"cache{mb}")
    growth = sizes[8] - sizes[2]
    assert growth < 6_000_000, f"peak grew by {growth / 1e6:.1f} MB for 6 MB more of one line: {sizes}"


def test_tokenizer_sample_is_bounded_in_characters_and_unchanged_below_the_bound():
    from llm_modules.data.tokenizer import _CHUNK_CHARS, _sample_lines

    rng = random.Random(4)
    lines = [prose(rng, 12) for _ in range(300)]
    assert _sample_lines(iter(lines), 100, 0) == _sample_lines(iter(lines), 100, 0, max_chars=10**9)
    one_line = " ".join(lines) * 20  # one line of ~100 chunks
    sample = _sample_lines(iter([one_line]), 10_000, 0, max_chars=20 * _CHUNK_CHARS)
    assert sum(map(len, sample)) <= 20 * _CHUNK_CHARS
    assert len(sample) >= 10  # shrunk to the budget, not emptied
    chunks = [one_line[i:i + _CHUNK_CHARS] for i in range(0, len(one_line), _CHUNK_CHARS)]
    positions = sorted(chunks.index(c) for c in sample)
    assert positions[0] < len(chunks) // 2 < positions[-1]  # drawn from the whole line, not its end
