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
    (root / "random.txt").write_bytes(random.Random(1).randbytes(6000))
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
