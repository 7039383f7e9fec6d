"""``data prepare`` runs: interrupted and resumed runs write exactly what an uninterrupted run writes;
reruns with other settings or inputs are refused; directories that are not ours are never touched;
the CLI end to end."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from _fit_helpers import reap
from test_prepare import CASES, SCRUB, change_words, prose, write_jsonl

from llm_modules.cli import main
from llm_modules.data.prepare import from_dict, prepare
from llm_modules.registry import ConfigError

TIMING = ("elapsed_s", "mb_per_s", "stage_seconds", "status", "workers")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Two inputs (a folder of text files, a JSONL file) with every kind of drop, and an eval file."""
    root = tmp_path_factory.mktemp("resume")
    rng = random.Random(21)
    originals = [prose(rng, 120) for _ in range(12)]
    texts = []
    for i, text in enumerate(originals):
        texts.append(text)
        if i % 3 == 0:
            texts.append(text)  # exact duplicate
        if i % 4 == 1:
            texts.append(change_words(text, 1, rng))  # near duplicate
        if i % 5 == 2:
            texts.append(list(CASES.values())[i % len(CASES)][0])  # junk
        if i % 2 == 0:
            texts.append(prose(rng, 60) + "\n" + SCRUB[i % len(SCRUB)][0])  # PII
    eval_text = prose(rng, 30)
    texts.insert(7, prose(rng, 50) + " " + eval_text)
    folder = root / "inputs" / "txt"
    folder.mkdir(parents=True)
    for i, text in enumerate(texts[:15]):
        (folder / f"doc{i:02d}.txt").write_text(text, encoding="utf-8")
    write_jsonl(root / "inputs" / "more.jsonl", texts[15:])
    write_jsonl(root / "eval.jsonl", [eval_text])
    return root, len(texts)


def settings(root: Path, out: str, **extra) -> dict:
    return {"inputs": [str(root / "inputs" / "txt"), str(root / "inputs" / "more.jsonl")], "out": str(root / out),
            "decontamination": {"eval_paths": [str(root / "eval.jsonl")]},
            "output": {"shard_docs": 5}, "executor": {"unit_mb": 0.002}, **extra}


def outputs(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.name.startswith("shard-")}


def counts(report: dict) -> dict:
    return {k: v for k, v in report.items() if k not in TIMING}


@pytest.fixture(scope="module")
def reference(corpus):
    root, _n = corpus
    report = prepare(from_dict(settings(root, "reference")), progress=False)
    return report, outputs(root / "reference")


def test_reference_run_drops_each_kind(corpus, reference):
    _, n = corpus
    report, shards = reference
    assert report["input"]["documents"] == n
    got = {rule: d["documents"] for rule, d in report["dropped"].items() if d["documents"]}
    assert got == {"symbol_ratio": 1, "boilerplate": 1, "exact_duplicate": 4, "decontamination": 1,
                   "near_duplicate": 3}
    assert len(shards) == 4 and all(not name.endswith(".partial") for name in shards)
    assert sum(report["pii_replacements"].values()) > 0


@pytest.mark.parametrize("stops", [[1], [9], [13, 2], [20, 6], [28]], ids=lambda s: "+".join(map(str, s)))
def test_interrupted_runs_resume_to_the_same_output(corpus, reference, stops, tmp_path):
    root, _n = corpus
    ref_report, ref_shards = reference
    config = settings(root, f"run-{'-'.join(map(str, stops))}")
    out = Path(config["out"])
    done = 0
    for stop in stops:
        with pytest.raises(KeyboardInterrupt):
            prepare(from_dict(config), progress=False, stop_after=stop)
        done += stop
        manifest = json.loads((out / "prepare-manifest.json").read_text())
        assert manifest["complete"] is False
        for name, data in outputs(out).items():  # a shard under its final name is a finished shard
            if not name.endswith(".partial"):
                assert data == ref_shards[name]
        assert not (out / "report.json").exists()
    report = prepare(from_dict(config), progress=False)
    assert report["status"] == "resumed"
    assert outputs(out) == ref_shards
    assert counts(report) == counts(ref_report)
    assert counts(json.loads((out / "report.json").read_text())) == counts(ref_report)
    assert not (out / ".prepare-state").exists()


def test_workers_write_the_same_output(corpus, reference):
    root, _ = corpus
    report = prepare(from_dict(settings(root, "workers", workers=2)), progress=False)
    assert outputs(root / "workers") == reference[1]
    assert counts(report) == counts(reference[0])


def test_rerun_of_a_complete_preparation_does_nothing(corpus, reference):
    """No output is touched; only the lock file, which each run takes and stamps with its pid."""
    root, _ = corpus
    outputs_mtimes = lambda: {p.name: p.stat().st_mtime_ns  # noqa: E731
                              for p in (root / "reference").iterdir() if p.name != ".prepare.lock"}
    before = outputs_mtimes()
    report = prepare(from_dict(settings(root, "reference")), progress=False)
    assert report["status"] == "already complete"
    assert counts(report) == counts(reference[0])
    assert outputs_mtimes() == before and before


def test_other_settings_or_inputs_are_refused_and_overwrite_starts_over(corpus, tmp_path):
    root, _ = corpus
    config = settings(root, "refuse")
    with pytest.raises(KeyboardInterrupt):
        prepare(from_dict(config), progress=False, stop_after=5)
    changed = {**config, "filters": {"length": {"min_words": 10}}}
    with pytest.raises(ConfigError, match=r"holds an unfinished preparation made with other settings "
                                          r"\(filters\.length\.min_words differ\).*--overwrite"):
        prepare(from_dict(changed), progress=False)
    report = prepare(from_dict(changed), overwrite=True, progress=False)
    assert report["status"] == "complete"
    # the inputs change: refused
    extra = root / "inputs" / "txt" / "zz-new.txt"
    extra.write_text(prose(random.Random(1), 80))
    try:
        with pytest.raises(ConfigError, match=r"holds a complete preparation made with other inputs"):
            prepare(from_dict(changed), progress=False)
    finally:
        extra.unlink()


def test_directories_that_are_not_ours_are_never_touched(corpus, tmp_path):
    root, _ = corpus
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.txt").write_text("do not delete")
    config = {**settings(root, "x"), "out": str(precious)}
    for overwrite in (False, True):
        with pytest.raises(ConfigError, match=r"not empty and was not written by 'llm-modules data prepare'"):
            prepare(from_dict(config), overwrite=overwrite, progress=False)
    assert [p.name for p in precious.iterdir()] == ["thesis.txt"]
    inside = {**settings(root, "x"), "out": str(root / "inputs" / "txt" / "prepared")}
    with pytest.raises(ConfigError, match=r"is inside input inputs\[0\]"):
        prepare(from_dict(inside), progress=False)
    a_file = tmp_path / "file"
    a_file.write_text("")
    with pytest.raises(ConfigError, match=r"is a file"):
        prepare(from_dict({**settings(root, "x"), "out": str(a_file)}), progress=False)


def test_a_second_run_into_the_same_output_is_refused(corpus):
    from llm_modules.data.prepare.manifest import lock

    root, _ = corpus
    config = settings(root, "locked")
    held = lock(root / "locked")  # as a running preparation holds it
    try:
        with pytest.raises(ConfigError, match=r"is being written by another 'llm-modules data prepare' right now"):
            prepare(from_dict(config), progress=False)
    finally:
        held.close()
    assert prepare(from_dict(config), progress=False)["status"] == "complete"


def test_damaged_output_asks_for_overwrite(corpus):
    root, _ = corpus
    config = settings(root, "damaged")
    with pytest.raises(KeyboardInterrupt):
        prepare(from_dict(config), progress=False, stop_after=7)
    committed = sorted((root / "damaged" / ".prepare-state" / "units").glob("u-*/docs.npy"))
    assert committed
    committed[0].unlink()
    with pytest.raises(ConfigError, match=r"unit u-000000 .*damaged.*rerun with --overwrite"):
        prepare(from_dict(config), progress=False)
    assert prepare(from_dict(config), progress=False, overwrite=True)["status"] == "complete"


# ---- CLI ------------------------------------------------------------------------------------------------


def one_line_error(err: str, *parts: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    for part in parts:
        assert part in lines[0], lines[0]


def test_cli_end_to_end(corpus, reference, tmp_path, capsys):
    root, n = corpus
    out = tmp_path / "cli-out"
    args = ["data", "prepare", str(root / "inputs" / "txt"), str(root / "inputs" / "more.jsonl"),
            "--out", str(out), "--eval", str(root / "eval.jsonl"), "--shard-docs", "5", "--no-progress"]
    assert main(args) == 0
    table = capsys.readouterr().out
    assert re.search(rf"^input\s+{n}\s", table, re.MULTILINE) and re.search(r"^  near_duplicate\s+3\s", table, re.MULTILINE)
    report = json.loads((out / "report.json").read_text())
    assert counts(report) == counts(reference[0])
    assert outputs(out) == reference[1]
    assert main(args) == 0
    assert "already holds this preparation" in capsys.readouterr().err
    assert main(args + ["--min-words", "10"]) == 2
    one_line_error(capsys.readouterr().err, "llm-modules data: error:", "other settings",
                   "filters.length.min_words", "--overwrite")
    assert main(args + ["--min-words", "10", "--overwrite", "--disable", "near_duplicate,exact_duplicate"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["dropped"]["near_duplicate"]["active"] is False
    assert report["dropped"]["exact_duplicate"]["documents"] == 0


def test_cli_config_file_and_overrides(corpus, tmp_path, capsys):
    root, _ = corpus
    config = tmp_path / "prepare.yaml"
    config.write_text(yaml.safe_dump({
        "inputs": [str(root / "inputs" / "more.jsonl")], "out": str(tmp_path / "from-yaml"),
        "filters": {"length": {"min_words": 10}, "top_ngrams": {"thresholds": {2: 0.3}}},
        "near_duplicate": {"threshold": 0.7},
    }))
    assert main(["data", "prepare", "--config", str(config), "--no-progress", "--set", "pii.kinds=[email]",
                 "--max-symbol-ratio", "0.2"]) == 0
    capsys.readouterr()
    manifest = json.loads((tmp_path / "from-yaml" / "prepare-manifest.json").read_text())
    c = manifest["config"]
    assert c["filters"]["length"]["min_words"] == 10 and c["filters"]["top_ngrams"]["thresholds"] == {"2": 0.3}
    assert c["near_duplicate"]["threshold"] == 0.7 and c["pii"]["kinds"] == ["email"]
    assert c["filters"]["symbol_ratio"]["max_ratio"] == 0.2


@pytest.mark.parametrize("extra,parts", [
    (["--near-threshold", "1.5"], ["near_duplicate.threshold=1.5 must be in (0, 1]"]),
    (["--max-symbol-ratio", "-1"], ["filters.symbol_ratio.max_ratio=-1.0 must be 0 or more"]),
    (["--disable", "lenght"], ["unknown rule 'lenght' (did you mean 'length'?)"]),
    (["--set", "filters.lenght.min_words=3"], ["filters.lenght: unknown setting"]),
    (["--set", "nonsense"], ["expected KEY=VALUE"]),
    (["--config", "missing.yaml"], ["--config 'missing.yaml'"]),
])
def test_cli_bad_settings_exit_2_with_one_line(corpus, tmp_path, capsys, extra, parts):
    root, _ = corpus
    code = main(["data", "prepare", str(root / "eval.jsonl"), "--out", str(tmp_path / "o"), "--no-progress", *extra])
    assert code == 2
    one_line_error(capsys.readouterr().err, "llm-modules data: error:", *parts)


def test_cli_missing_input_and_help(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["data", "prepare", "nowhere/", "--out", "o", "--no-progress"]) == 2
    one_line_error(capsys.readouterr().err, "inputs[0]: 'nowhere/' does not exist")
    assert main(["data", "prepare", "--out", "o"]) == 2
    one_line_error(capsys.readouterr().err, "no inputs")
    assert main(["data", "--help"]) == 0
    assert "prepare" in capsys.readouterr().out
    assert main(["data", "prepare", "--help"]) == 0
    text = capsys.readouterr().out
    assert "--overwrite" in text and "--eval" in text and "--min-words" in text
    assert main(["data"]) == 2
    assert not os.path.exists(tmp_path / "o")


def test_a_killed_process_resumes_to_the_same_output(tmp_path):
    """SIGKILL (no Python cleanup, unlike the interrupt hook above) in the middle of a real run; the
    same command run again finishes it, and the shards are byte for byte those of an unbroken run."""
    rng = random.Random(5)
    texts = [prose(rng, 60) for _ in range(3000)]
    texts += [texts[i] for i in range(0, 3000, 7)]  # exact duplicates, so the logs carry state
    write_jsonl(tmp_path / "in.jsonl", texts)
    args = lambda out: ["data", "prepare", str(tmp_path / "in.jsonl"), "--out", str(tmp_path / out),
                        "--unit-mb", "0.02", "--shard-docs", "500", "--no-progress", "--workers", "2"]
    assert main(args("whole")) == 0
    proc = subprocess.Popen([sys.executable, "-m", "llm_modules", *args("killed")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    units = tmp_path / "killed" / ".prepare-state" / "units"
    deadline = time.monotonic() + 60
    try:
        while proc.poll() is None and time.monotonic() < deadline:  # wait until some units are committed
            if len(list(units.glob("u-*/summary.json"))) >= 8:
                break
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        reap(proc)  # its spawned workers too
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert json.loads((tmp_path / "killed" / "prepare-manifest.json").read_text())["complete"] is False
    assert main(args("killed")) == 0
    assert outputs(tmp_path / "killed") == outputs(tmp_path / "whole")
    assert counts(json.loads((tmp_path / "killed" / "report.json").read_text())) == \
        counts(json.loads((tmp_path / "whole" / "report.json").read_text()))
