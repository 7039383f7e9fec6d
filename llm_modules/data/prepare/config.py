"""The preparation's settings: a plain dataclass tree, loadable from YAML, every threshold overridable.

Why plain dataclasses: the tree is what a YAML file, the command-line flags and the manifest store,
so it must round-trip through ``dict`` losslessly (:func:`to_dict` / :func:`from_dict`) and be
compared field by field when a rerun has to decide between resuming and refusing. Validation lives
here too, so a bad value is reported once, with the field's dotted name and the fix, before any
input is read.

Layout (YAML keys are the field names)::

    inputs: [raw/web, dump.jsonl]          # files, directories, globs, JSONL (see data.sources)
    out: prepared/web
    normalize: {nfkc: false, strip: true, newlines: true}
    filters:
      binary: {drop_nul: true, max_bad_share: 0.01}
      length: {min_words: 50, max_words: 100000}
      symbol_ratio: {max_ratio: 0.1}
      boilerplate: {patterns: [...], max_line_share: 0.0}
      duplicate_lines: {max_line_share: 0.3, max_char_share: 0.2}
      top_ngrams: {thresholds: {2: 0.2, 3: 0.18, 4: 0.16}}
      duplicate_ngrams: {thresholds: {5: 0.15, 7: 0.13, 10: 0.1}}
    pii: {kinds: [email, phone, ip_address, card_number]}
    exact_duplicate: {enabled: true}
    decontamination: {eval_paths: [eval.jsonl], ngram: 13}
    near_duplicate: {ngram: 5, num_perm: 128, threshold: 0.8}
    output: {shard_mb: 64}
    workers: 4                             # tasks at once
    executor: {kind: local, unit_mb: 64}   # or slurm: {partition: cpu, time: "04:00:00"}, or ray: {address: ...}

Every section has ``enabled``; ``--disable NAME`` turns one off from the command line. Relative
paths (``inputs``, ``out``, ``decontamination.eval_paths``) start at the current directory, not at
the YAML file's.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from llm_modules.registry import ConfigError

#: the rules of the report, in the order a document meets them (the first that fires is charged)
FILTER_RULES = ("binary", "length", "symbol_ratio", "boilerplate", "duplicate_lines", "top_ngrams", "duplicate_ngrams")
RULES = ("empty", *FILTER_RULES, "exact_duplicate", "decontamination", "near_duplicate")
#: what ``--disable`` accepts: every rule that can be switched off, plus the PII scrubber
SWITCHABLE = (*FILTER_RULES, "pii", "exact_duplicate", "decontamination", "near_duplicate")
PII_KINDS = ("email", "phone", "ip_address", "card_number")
DEFAULT_TAGS = {"email": "<EMAIL>", "phone": "<PHONE>", "ip_address": "<IP_ADDRESS>", "card_number": "<CARD_NUMBER>"}
DEFAULT_BOILERPLATE = [
    r"lorem ipsum",
    r"javascript is (?:disabled|required|not enabled)",
    r"enable javascript",
    r"this (?:web)?site uses cookies",
    r"we use cookies",
    r"cookie policy",
    r"accept (?:all )?cookies",
]


@dataclass
class NormalizeConfig:
    """How text is normalised before anything looks at it."""

    nfkc: bool = False  # Unicode NFKC (folds compatibility forms: full-width letters, ligatures, ...)
    strip: bool = True  # strip leading/trailing whitespace of the document
    newlines: bool = True  # \r\n and \r become \n


@dataclass
class BinaryConfig:
    """Binary files and text in the wrong encoding: inputs are decoded as UTF-8 with each undecodable
    byte replaced by U+FFFD, so such a document shows as replacement and control characters."""

    enabled: bool = True
    drop_nul: bool = True  # any NUL character drops the document (no text format holds one)
    # largest share of characters that are U+FFFD (undecodable bytes) or control characters other than
    # tab, newline, carriage return, vertical tab and form feed (1 in 100: text in another encoding)
    max_bad_share: float = 0.01


@dataclass
class LengthConfig:
    enabled: bool = True
    min_chars: int | None = None
    max_chars: int | None = None
    min_words: int | None = 50
    max_words: int | None = 100_000


@dataclass
class SymbolRatioConfig:
    enabled: bool = True
    symbols: list[str] = field(default_factory=lambda: ["#", "...", "\u2026"])
    max_ratio: float = 0.1  # symbols per word


@dataclass
class BoilerplateConfig:
    enabled: bool = True
    # regexes searched in the lower-cased text (write them in lower case)
    patterns: list[str] = field(default_factory=lambda: list(DEFAULT_BOILERPLATE))
    max_line_share: float = 0.0  # drop when more than this share of lines match (0: any match drops)


@dataclass
class DuplicateLinesConfig:
    enabled: bool = True
    max_line_share: float | None = 0.30  # repeated lines / non-empty lines
    max_char_share: float | None = 0.20  # characters in repeated lines / characters in lines


@dataclass
class TopNgramsConfig:
    enabled: bool = True
    # n -> largest share of word characters the most frequent n-gram may cover
    thresholds: dict[int, float] = field(default_factory=lambda: {2: 0.20, 3: 0.18, 4: 0.16})


@dataclass
class DuplicateNgramsConfig:
    enabled: bool = True
    # n -> largest share of word characters that may sit in repeated n-grams
    thresholds: dict[int, float] = field(default_factory=lambda: {5: 0.15, 7: 0.13, 10: 0.10})


@dataclass
class FiltersConfig:
    binary: BinaryConfig = field(default_factory=BinaryConfig)
    length: LengthConfig = field(default_factory=LengthConfig)
    symbol_ratio: SymbolRatioConfig = field(default_factory=SymbolRatioConfig)
    boilerplate: BoilerplateConfig = field(default_factory=BoilerplateConfig)
    duplicate_lines: DuplicateLinesConfig = field(default_factory=DuplicateLinesConfig)
    top_ngrams: TopNgramsConfig = field(default_factory=TopNgramsConfig)
    duplicate_ngrams: DuplicateNgramsConfig = field(default_factory=DuplicateNgramsConfig)


@dataclass
class PIIConfig:
    enabled: bool = True
    kinds: list[str] = field(default_factory=lambda: list(PII_KINDS))
    tags: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_TAGS))


@dataclass
class ExactDuplicateConfig:
    enabled: bool = True


@dataclass
class DecontaminationConfig:
    enabled: bool = True  # active only when eval_paths lists something
    eval_paths: list[str] = field(default_factory=list)
    text_field: str = "text"
    ngram: int = 13


@dataclass
class NearDuplicateConfig:
    enabled: bool = True
    ngram: int = 5  # words per shingle
    num_perm: int = 128  # MinHash permutations
    threshold: float = 0.8  # Jaccard similarity that counts as a near duplicate
    bands: int | None = None  # LSH bands x rows; default: chosen from threshold and num_perm
    rows: int | None = None
    verify: bool = True  # a bucket collision drops only if the signatures' estimated Jaccard >= threshold
    seed: int = 1


@dataclass
class OutputConfig:
    shard_mb: float = 64.0  # a shard is closed once it holds this many MB (1e6 bytes)
    shard_docs: int | None = None  # ... or this many documents
    source_id: bool = True  # write each document's source_id next to its text


EXECUTORS = ("local", "slurm", "ray")


@dataclass
class SlurmConfig:
    """``--executor slurm``: the job arrays submitted with ``sbatch`` (one per stage, chained)."""

    partition: str | None = None  # None: the cluster's default partition
    time: str = "04:00:00"  # per array task
    cpus_per_task: int = 1
    mem_per_cpu_gb: int = 2
    job_name: str = "llm-modules-prepare"
    env_command: str | None = None  # shell line run first in each job (default: activate this interpreter's venv)
    sbatch_args: dict[str, str] = field(default_factory=dict)  # more #SBATCH lines, e.g. {account: myproj}
    submit: bool = True  # false: write the submission scripts without calling sbatch


@dataclass
class RayConfig:
    """``--executor ray``: tasks on a running Ray cluster."""

    address: str | None = None  # e.g. 10.0.0.1:6379 or ray://host:10001; None: RAY_ADDRESS, else a local Ray
    cpus_per_task: int = 1
    mem_per_cpu_gb: float = 1.0


@dataclass
class ExecutorConfig:
    """Where the stages run. None of it changes the output: not compared when a run resumes."""

    kind: str = "local"  # local | slurm | ray
    tasks: int | None = None  # tasks of the per-document stage (default: 4 per worker, at most one per unit)
    unit_mb: float = 64.0  # JSONL files are cut at line ends into units of about this size (the unit of resume)
    slurm: SlurmConfig = field(default_factory=SlurmConfig)
    ray: RayConfig = field(default_factory=RayConfig)


@dataclass
class PrepareConfig:
    inputs: list[str] = field(default_factory=list)
    out: str | None = None
    pattern: list[str] | None = None  # file globs inside directories (default: data.sources')
    text_field: str = "text"  # the JSONL key that holds the text
    normalize: NormalizeConfig = field(default_factory=NormalizeConfig)
    filters: FiltersConfig = field(default_factory=FiltersConfig)
    pii: PIIConfig = field(default_factory=PIIConfig)
    exact_duplicate: ExactDuplicateConfig = field(default_factory=ExactDuplicateConfig)
    decontamination: DecontaminationConfig = field(default_factory=DecontaminationConfig)
    near_duplicate: NearDuplicateConfig = field(default_factory=NearDuplicateConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    # tasks run at once (local processes, Ray tasks, Slurm array slots); the output does not depend on it
    workers: int = 1
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)

    # ---- switching rules ------------------------------------------------------------------------------

    def section(self, name: str) -> Any:
        """The config section of a switchable rule (``length`` -> ``filters.length``)."""
        if name not in SWITCHABLE:
            close = difflib.get_close_matches(name, SWITCHABLE, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"unknown rule {name!r}{hint}; rules: {', '.join(SWITCHABLE)}")
        return getattr(self.filters, name) if name in FILTER_RULES else getattr(self, name)

    def disable(self, name: str) -> None:
        self.section(name).enabled = False

    def validate(self) -> PrepareConfig:
        """Check every value; raise ConfigError naming the field and the fix. Returns self."""
        _validate(self)
        return self


# ---- dict <-> dataclass ------------------------------------------------------------------------------------


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def semantic_dict(config: PrepareConfig) -> dict[str, Any]:
    """The settings that decide the output: what a rerun must match to resume (not ``out``, ``workers``
    or where the stages run)."""
    data = to_dict(config)
    data.pop("out")
    data.pop("workers")
    data.pop("executor")
    return data


def from_dict(data: dict[str, Any] | None, base: PrepareConfig | None = None) -> PrepareConfig:
    """A config from a (partial) mapping, layered over ``base`` (default: the defaults)."""
    config = base if base is not None else PrepareConfig()
    if data is None:
        return config
    _update(config, data, "")
    return config


def load_yaml(path: str | Path, base: PrepareConfig | None = None) -> PrepareConfig:
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as err:
        raise ConfigError(f"--config {str(path)!r}: {err.strerror}; give the path of a YAML file") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"--config {str(path)!r} is not valid YAML: {err}") from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"--config {str(path)!r} holds a {type(data).__name__}; expected a mapping of settings "
                          "(inputs, out, filters, pii, ...)")
    return from_dict(data, base)


def set_value(config: PrepareConfig, dotted: str, value: Any) -> None:
    """Set one field by its dotted name (``filters.length.min_words``), as ``--set`` does."""
    parts = dotted.split(".")
    nested: dict[str, Any] = {parts[-1]: value}
    for part in reversed(parts[:-1]):
        nested = {part: nested}
    _update(config, nested, "")


def _update(obj: Any, data: Any, prefix: str) -> None:
    where = prefix.rstrip(".") or "config"
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of settings, got {type(data).__name__} {data!r}")
    hints = typing.get_type_hints(type(obj))
    names = [f.name for f in dataclasses.fields(obj)]
    for key, value in data.items():
        name = str(key)
        if name not in names:
            close = difflib.get_close_matches(name, names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{prefix}{name}: unknown setting{hint}; settings here: {', '.join(names)}")
        hint_type = hints[name]
        current = getattr(obj, name)
        if dataclasses.is_dataclass(current):
            _update(current, value, f"{prefix}{name}.")
        else:
            setattr(obj, name, _coerce(value, hint_type, f"{prefix}{name}"))


def _coerce(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], where)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}={value!r}: expected true or false")
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or float(value) != int(value):
            raise ConfigError(f"{where}={value!r}: expected a whole number")
        return int(value)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}={value!r}: expected a number")
        return float(value)
    if hint is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{where}={value!r}: expected a string")
        return str(value)
    if origin is list:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}={value!r}: expected a list")
        return [_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}={value!r}: expected a mapping")
        key_type, value_type = args
        return {_coerce(_key(k, key_type, where), key_type, f"{where} key"): _coerce(v, value_type, f"{where}[{k}]")
                for k, v in value.items()}
    return value


def _key(key: Any, key_type: Any, where: str) -> Any:
    if key_type is int and isinstance(key, str):
        try:
            return int(key)
        except ValueError:
            raise ConfigError(f"{where}: key {key!r} is not a whole number (an n-gram size such as 5)") from None
    return key


# ---- validation ------------------------------------------------------------------------------------------


def _share(where: str, value: float | None, *, zero_ok: bool = True) -> None:
    if value is None:
        return
    low_ok = value >= 0 if zero_ok else value > 0
    if not (low_ok and value <= 1):
        low = "[0, 1]" if zero_ok else "(0, 1]"
        raise ConfigError(f"{where}={value!r} must be in {low}: it is a share (0.3 = 30%); fix the value or "
                          "disable the rule")


def _at_least(where: str, value: float | None, low: float) -> None:
    if value is not None and value < low:
        raise ConfigError(f"{where}={value!r} must be at least {low}")


def _validate(c: PrepareConfig) -> None:
    f = c.filters
    _share("filters.binary.max_bad_share", f.binary.max_bad_share)
    for name in ("min_chars", "max_chars", "min_words", "max_words"):
        _at_least(f"filters.length.{name}", getattr(f.length, name), 0)
    for lo, hi in (("min_chars", "max_chars"), ("min_words", "max_words")):
        a, b = getattr(f.length, lo), getattr(f.length, hi)
        if a is not None and b is not None and a > b:
            raise ConfigError(f"filters.length.{lo}={a} is larger than filters.length.{hi}={b}; "
                              "no document could pass")
    if f.symbol_ratio.max_ratio < 0:
        raise ConfigError(f"filters.symbol_ratio.max_ratio={f.symbol_ratio.max_ratio!r} must be 0 or more "
                          "(symbols per word, e.g. 0.1)")
    if f.symbol_ratio.enabled and not [s for s in f.symbol_ratio.symbols if s]:
        raise ConfigError("filters.symbol_ratio.symbols is empty; list symbols such as '#' and '...' "
                          "or disable the rule")
    _share("filters.boilerplate.max_line_share", f.boilerplate.max_line_share)
    for i, pattern in enumerate(f.boilerplate.patterns):
        try:
            re.compile(pattern)
        except re.error as err:
            raise ConfigError(f"filters.boilerplate.patterns[{i}]={pattern!r} is not a valid regular "
                              f"expression ({err}); escape special characters with re.escape") from None
        if any(ch.isupper() for ch in re.sub(r"\\.", "", pattern)):
            raise ConfigError(f"filters.boilerplate.patterns[{i}]={pattern!r} has upper-case letters, but patterns "
                              "are matched against the lower-cased text; write it in lower case")
    _share("filters.duplicate_lines.max_line_share", f.duplicate_lines.max_line_share)
    _share("filters.duplicate_lines.max_char_share", f.duplicate_lines.max_char_share)
    for section in ("top_ngrams", "duplicate_ngrams"):
        for n, share in getattr(f, section).thresholds.items():
            _at_least(f"filters.{section}.thresholds key", n, 1)
            _share(f"filters.{section}.thresholds[{n}]", share)
    for kind in c.pii.kinds:
        if kind not in PII_KINDS:
            close = difflib.get_close_matches(kind, PII_KINDS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"pii.kinds: unknown kind {kind!r}{hint}; kinds: {', '.join(PII_KINDS)}")
    for kind in c.pii.tags:
        if kind not in PII_KINDS:
            raise ConfigError(f"pii.tags: unknown kind {kind!r}; kinds: {', '.join(PII_KINDS)}")
    _at_least("decontamination.ngram", c.decontamination.ngram, 1)
    nd = c.near_duplicate
    _at_least("near_duplicate.ngram", nd.ngram, 1)
    _at_least("near_duplicate.num_perm", nd.num_perm, 1)
    _share("near_duplicate.threshold", nd.threshold, zero_ok=False)
    if (nd.bands is None) != (nd.rows is None):
        raise ConfigError("near_duplicate.bands and near_duplicate.rows go together; give both or neither "
                          "(neither: chosen from the threshold)")
    if nd.bands is not None:
        _at_least("near_duplicate.bands", nd.bands, 1)
        _at_least("near_duplicate.rows", nd.rows, 1)
        if nd.bands * nd.rows > nd.num_perm:
            raise ConfigError(f"near_duplicate.bands x rows = {nd.bands * nd.rows} exceeds num_perm={nd.num_perm}; "
                              "lower them or raise num_perm")
    if c.output.shard_mb <= 0:
        raise ConfigError(f"output.shard_mb={c.output.shard_mb!r} must be positive (e.g. 64)")
    _at_least("output.shard_docs", c.output.shard_docs, 1)
    if c.executor.kind not in EXECUTORS:
        close = difflib.get_close_matches(str(c.executor.kind), EXECUTORS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"executor.kind: unknown executor {c.executor.kind!r}{hint}; choose one of "
                          f"{', '.join(EXECUTORS)}")
    _at_least("executor.tasks", c.executor.tasks, 1)
    if c.executor.unit_mb <= 0:
        raise ConfigError(f"executor.unit_mb must be > 0 (got {c.executor.unit_mb}); e.g. 64")
    _at_least("executor.slurm.cpus_per_task", c.executor.slurm.cpus_per_task, 1)
    _at_least("executor.ray.cpus_per_task", c.executor.ray.cpus_per_task, 1)
    _at_least("workers", c.workers, 1)
    if not c.text_field:
        raise ConfigError("text_field is empty; give the JSONL key that holds the text")
