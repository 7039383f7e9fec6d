"""What was removed and why: the counters a preparation keeps, ``report.json`` and the printed table.

Why per rule: a user tuning thresholds needs to see which rule removed how much. Every dropped
document is charged to exactly one rule, the first that fired in stage order (see ``config.RULES``),
so the document rows add up: input = kept + sum of dropped.

Characters of the input and of dropped documents are counted as read (before normalisation);
those of kept documents as written (normalised and scrubbed), so the kept row says how much text
the output holds. Bytes are UTF-8 bytes of the input text and of the kept (final) text. PII replacements are counted in the kept
documents. ``stage_seconds`` add up the time each stage took over all documents (summed over worker
processes, so with ``--workers`` it can exceed the wall time).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from llm_modules.data.prepare.config import PII_KINDS, RULES


@dataclass
class Counts:
    input_documents: int = 0
    input_chars: int = 0
    input_bytes: int = 0
    kept_documents: int = 0
    kept_chars: int = 0
    kept_bytes: int = 0
    dropped: dict[str, list[int]] = field(default_factory=lambda: {r: [0, 0] for r in RULES})  # rule -> [docs, chars]
    pii: dict[str, int] = field(default_factory=lambda: {k: 0 for k in PII_KINDS})
    stage_seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Counts:
        c = cls(**{k: v for k, v in data.items() if k not in ("dropped", "pii", "stage_seconds")})
        c.dropped.update({k: list(v) for k, v in data.get("dropped", {}).items()})
        c.pii.update(data.get("pii", {}))
        c.stage_seconds.update(data.get("stage_seconds", {}))
        return c


def build_report(counts: Counts, *, elapsed_s: float, shards: list[dict[str, Any]], workers: int,
                 active: dict[str, bool]) -> dict[str, Any]:
    mb = counts.input_bytes / 1e6
    return {
        "input": {"documents": counts.input_documents, "characters": counts.input_chars, "bytes": counts.input_bytes},
        "kept": {"documents": counts.kept_documents, "characters": counts.kept_chars, "bytes": counts.kept_bytes},
        "dropped": {rule: {"documents": d, "characters": c, "active": active.get(rule, True)}
                    for rule, (d, c) in counts.dropped.items()},
        "pii_replacements": dict(counts.pii),
        "shards": shards,
        "elapsed_s": round(elapsed_s, 3),
        "mb_per_s": round(mb / elapsed_s, 3) if elapsed_s > 0 else None,
        "stage_seconds": {k: round(v, 3) for k, v in counts.stage_seconds.items()},
        "workers": workers,
    }


def empty_output_warning(report: dict[str, Any]) -> str | None:
    """One line when nothing was kept from a non-empty input, naming the rules that dropped it all, with
    counts, most first (None otherwise): an empty output trains nothing, and the table alone is easy to
    misread when every row but one is zero."""
    inp = report["input"]["documents"]
    if report["kept"]["documents"] or not inp:
        return None
    rules = sorted(((d["documents"], rule) for rule, d in report["dropped"].items() if d["documents"]), reverse=True)
    named = ", ".join(f"{rule} {n:,}" for n, rule in rules)
    switchable = [rule for _, rule in rules if rule != "empty"]
    fix = (f"loosen their thresholds (--set filters.<rule>.<setting>=...) or turn them off (--disable "
           f"{','.join(switchable)})") if switchable else "check the inputs (every document was empty)"
    return f"0 of {inp:,} input documents kept: all were dropped by {named}; {fix}"


def _pct(part: int, whole: int) -> str:
    return f"{100.0 * part / whole:5.1f}%" if whole else "    -"


def format_table(report: dict[str, Any], out: str | None = None) -> str:
    """The report as the table ``llm-modules data prepare`` prints."""
    inp, kept = report["input"], report["kept"]
    rows = [("input", inp["documents"], inp["characters"], "")]
    for rule, d in report["dropped"].items():
        note = "" if d.get("active", True) else "off"
        rows.append((f"  {rule}", d["documents"], d["characters"], note))
    rows.append(("kept", kept["documents"], kept["characters"], ""))
    width = max(len(r[0]) for r in rows)
    lines = [f"{'rule':<{width}}  {'documents':>10}  {'docs %':>6}  {'characters':>13}  {'chars %':>7}"]
    for name, docs, chars, note in rows:
        suffix = f"  ({note})" if note else ""
        lines.append(f"{name:<{width}}  {docs:>10,}  {_pct(docs, inp['documents']):>6}  {chars:>13,}  "
                     f"{_pct(chars, inp['characters']):>7}{suffix}")
    pii = report["pii_replacements"]
    lines.append("")
    lines.append("PII replaced in kept documents: " + ", ".join(f"{k} {v:,}" for k, v in pii.items()))
    shards = report["shards"]
    where = f"{out}: " if out else ""
    lines.append(f"output: {where}{len(shards)} shard(s), {kept['documents']:,} documents, "
                 f"{kept['bytes'] / 1e6:.2f} MB of text (input {inp['bytes'] / 1e6:.2f} MB)")
    speed = f", {report['mb_per_s']:.2f} MB/s" if report.get("mb_per_s") else ""
    lines.append(f"time: {report['elapsed_s']:.2f} s{speed}")
    return "\n".join(lines)
