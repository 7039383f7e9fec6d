"""``llm-modules data``: corpus tools. ``data prepare`` cleans a corpus and reports what it removed.

    llm-modules data prepare raw/web dump.jsonl --out prepared/web --eval eval/*.jsonl
    llm-modules data prepare --config prepare.yaml --min-words 20 --disable symbol_ratio

Settings come from the defaults, then ``--config FILE`` (YAML, the tree of
``llm_modules.data.prepare.config``), then the flags; ``--set filters.top_ngrams.thresholds="{2: 0.25}"``
reaches any setting that has no flag of its own. The table of what each rule removed is printed at
the end and kept as ``report.json`` in the output directory. Rerunning an interrupted command
resumes it; a rerun with other settings or inputs is refused unless ``--overwrite``.
"""

from __future__ import annotations

import argparse
import sys

import yaml

from llm_modules.registry import ConfigError

PREPARE_DESCRIPTION = (
    "Clean a corpus: normalize, quality filters (binary/encoding, length, symbol ratio, boilerplate, repeated lines and "
    "n-grams), PII scrubbing, exact and near-duplicate removal (MinHash LSH) and decontamination against "
    "evaluation files. Writes JSONL shards, report.json and a manifest to --out; the directory is then a "
    "data path for training (data.paths or data.mixture). Interrupted runs resume when rerun."
)

# flag -> (dotted setting, type, help)
THRESHOLD_FLAGS: list[tuple[str, str, type, str]] = [
    ("--min-words", "filters.length.min_words", int, "drop documents with fewer words (default 50)"),
    ("--max-words", "filters.length.max_words", int, "drop documents with more words (default 100000)"),
    ("--min-chars", "filters.length.min_chars", int, "drop documents with fewer characters (default: off)"),
    ("--max-chars", "filters.length.max_chars", int, "drop documents with more characters (default: off)"),
    ("--max-symbol-ratio", "filters.symbol_ratio.max_ratio", float,
     "largest '#', '...', '\u2026' count per word (default 0.1)"),
    ("--max-duplicate-lines", "filters.duplicate_lines.max_line_share", float,
     "largest share of repeated lines (default 0.3)"),
    ("--max-duplicate-line-chars", "filters.duplicate_lines.max_char_share", float,
     "largest share of characters in repeated lines (default 0.2)"),
    ("--max-boilerplate-lines", "filters.boilerplate.max_line_share", float,
     "largest share of lines matching a boilerplate pattern (default 0: any match drops)"),
    ("--near-threshold", "near_duplicate.threshold", float,
     "Jaccard similarity above which a document is a near duplicate (default 0.8)"),
    ("--shingle-size", "near_duplicate.ngram", int, "words per MinHash shingle (default 5)"),
    ("--num-perm", "near_duplicate.num_perm", int, "MinHash permutations (default 128)"),
    ("--bands", "near_duplicate.bands", int, "LSH bands (with --rows; default: chosen from the threshold)"),
    ("--rows", "near_duplicate.rows", int, "LSH rows per band (with --bands)"),
    ("--eval-ngram", "decontamination.ngram", int, "words per n-gram shared with evaluation data (default 13)"),
    ("--eval-text-field", "decontamination.text_field", str, "JSONL key of the evaluation texts (default text)"),
    ("--text-field", "text_field", str, "JSONL key of the input texts (default text)"),
    ("--shard-mb", "output.shard_mb", float, "MB per output shard (default 64)"),
    ("--shard-docs", "output.shard_docs", int, "documents per output shard (default: no limit)"),
    ("--workers", "workers", int, "tasks at once: local processes, Ray tasks or Slurm array slots (default 1; the "
                                  "output does not change)"),
    ("--executor", "executor.kind", str, "where the stages run: local (default), slurm (submits job arrays) or ray "
                                         "(a running Ray cluster); the output does not change"),
    ("--tasks", "executor.tasks", int, "tasks of the per-document stage (default: 4 per worker, one per unit at most)"),
    ("--unit-mb", "executor.unit_mb", float, "JSONL files are cut into units of about this many MB: the grain of "
                                             "parallel work and of resume (default 64)"),
    ("--partition", "executor.slurm.partition", str, "Slurm partition (default: the cluster's default)"),
    ("--time", "executor.slurm.time", str, "Slurm time limit per array task (default 04:00:00)"),
    ("--cpus-per-task", "executor.slurm.cpus_per_task", int, "Slurm CPUs per array task (default 1)"),
    ("--ray-address", "executor.ray.address", str, "Ray cluster address, e.g. 10.0.0.1:6379 (default: RAY_ADDRESS, "
                                                   "else a Ray started on this machine)"),
]


def build_parser() -> argparse.ArgumentParser:
    from llm_modules.data.prepare.config import SWITCHABLE

    parser = argparse.ArgumentParser(prog="llm-modules data", description="Corpus tools.")
    sub = parser.add_subparsers(dest="action", metavar="{prepare}")
    p = sub.add_parser("prepare", prog="llm-modules data prepare", description=PREPARE_DESCRIPTION,
                       help="clean a corpus: filters, dedup, PII scrubbing, decontamination")
    p.add_argument("inputs", nargs="*", metavar="INPUTS",
                   help="text files, directories, globs or JSONL files (or 'inputs:' in --config)")
    p.add_argument("--out", metavar="DIR", help="output directory (created; or 'out:' in --config)")
    p.add_argument("--config", metavar="FILE", help="YAML settings (see the tutorial 'Prepare data')")
    p.add_argument("--eval", nargs="+", metavar="FILE", default=None,
                   help="evaluation files (text or JSONL): drop training documents sharing a word 13-gram with "
                        "them (give INPUTS before --eval)")
    p.add_argument("--pattern", default=None, metavar="GLOBS",
                   help="file globs inside directories, comma-separated (default: *.py,*.txt,*.md,*.rst,*.jsonl)")
    p.add_argument("--nfkc", action="store_true", default=None, help="apply Unicode NFKC normalization")
    p.add_argument("--disable", action="append", default=[], metavar="RULE",
                   help=f"turn a rule off (repeat or comma-separate): {', '.join(SWITCHABLE)}")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="set any setting by its dotted name, value in YAML, e.g. filters.length.min_words=20")
    shown = {"--time": "HH:MM:SS", "--ray-address": "HOST:PORT", "--executor": "{local,slurm,ray}"}
    for flag, _, kind, text in THRESHOLD_FLAGS:
        metavar = shown.get(flag) or {int: "N", float: "X", str: "NAME"}[kind]
        p.add_argument(flag, type=kind, default=None, metavar=metavar, help=text)
    p.add_argument("--overwrite", action="store_true",
                   help="start over in an --out that holds another preparation (never touches other directories)")
    p.add_argument("--no-progress", action="store_true", help="no progress lines (default: shown on a terminal)")
    p.add_argument("--no-submit", action="store_true",
                   help="with --executor slurm: write the submission scripts but do not call sbatch")
    return parser


def config_from_args(args: argparse.Namespace):
    from llm_modules.data.prepare.config import PrepareConfig, load_yaml, set_value

    config = load_yaml(args.config) if args.config else PrepareConfig()
    if args.inputs:
        config.inputs = list(args.inputs)
    if args.out:
        config.out = args.out
    if args.eval:
        config.decontamination.eval_paths = list(args.eval)
    if args.pattern:
        config.pattern = [p.strip() for p in args.pattern.split(",") if p.strip()]
    if args.nfkc:
        config.normalize.nfkc = True
    if args.no_submit:
        config.executor.slurm.submit = False
    for flag, dotted, _, _ in THRESHOLD_FLAGS:
        value = getattr(args, flag.lstrip("-").replace("-", "_"))
        if value is not None:
            set_value(config, dotted, value)
    for item in args.overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. filters.length.min_words=20")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as err:
            raise ConfigError(f"--set {item!r}: the value is not valid YAML ({err})") from None
        set_value(config, key.strip(), value)
    for group in args.disable:
        for name in (n.strip() for n in group.split(",")):
            if name:
                config.disable(name)
    if not config.inputs:
        raise ConfigError("data prepare: no inputs; give files, directories, globs or JSONL files (or 'inputs:' "
                          "in --config)")
    if not config.out:
        raise ConfigError("data prepare: no output directory; pass --out DIR (or 'out:' in --config)")
    return config.validate()


def run(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.action is None:
        parser.print_help(sys.stderr)
        return 2
    from llm_modules.data.prepare import format_table, prepare

    config = config_from_args(args)
    try:
        report = prepare(config, overwrite=args.overwrite, progress=False if args.no_progress else None)
    except KeyboardInterrupt:
        print(f"llm-modules data prepare: interrupted; rerun the same command to resume from the last "
              f"checkpoint in {config.out}", file=sys.stderr)
        return 130
    if report.get("status") == "submitted":
        _print_submitted(report)
        return 0
    if report.get("status") == "already complete":
        print(f"{config.out} already holds this preparation (same settings and inputs); nothing to do "
              "(--overwrite redoes it)", file=sys.stderr)
    elif report.get("status") == "resumed":
        print(f"resumed the interrupted preparation in {config.out}", file=sys.stderr)
    print(format_table(report, config.out))
    for warning in report.get("warnings", []):
        print(f"llm-modules data prepare: warning: {warning}", file=sys.stderr)
    return 0


def _print_submitted(report: dict) -> None:
    for job in report["jobs"]:
        state = f"job {job['job_id']}" if job["job_id"] else "not submitted (--no-submit)"
        print(f"{job['stage']}: {job['tasks']} task(s), {state}: {_shown(job['script'])}")
    if not any(job["job_id"] for job in report["jobs"]):
        print("submit them in this order, each with --dependency=afterok:JOBID of the one before", file=sys.stderr)
    print(f"once the jobs have ended, rerun the same command: it prints the report of {report['out']}, or "
          "resubmits only the tasks that did not complete", file=sys.stderr)


def _shown(path: str) -> str:
    """``path`` relative to the working directory when it is inside it (as the user typed --out)."""
    import os

    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative
