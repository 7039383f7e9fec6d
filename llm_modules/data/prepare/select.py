"""The stages that remember earlier documents, run once over every unit in input order.

Why one pass in input order: exact duplicates and near duplicates keep the *first* copy, and the
near-duplicate index holds only documents that are kept (a contaminated or exactly duplicated
document must not shadow a later clean near copy; ``pipeline`` says why the stages are in this
order). That is a sequential decision, so it runs in a single task; it reads only the small
per-document records (rule, sizes, hash, signature), never the texts, so it does dictionary
lookups at hundreds of thousands of documents a second while the per-document stage, which is
where the time goes, runs on every worker.

It also lays out the output: shard boundaries follow the kept documents' line lengths exactly as a
single writer appending them in order would close a shard (once it holds ``shard_mb`` MB or
``shard_docs`` documents), so the write stage can write every shard independently and the bytes do
not depend on how many tasks wrote them. The choices go to ``select/u-NNNNNN.npy`` (kept document
rows and their shard) and ``select/plan.json`` (counts, shards, line offsets).
"""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np

from llm_modules.data.prepare.config import PII_KINDS, RULES
from llm_modules.data.prepare.minhash import LSHIndex
from llm_modules.data.prepare.records import KEPT, UnitRecords, output_line, unit_name
from llm_modules.data.prepare.report import Counts
from llm_modules.data.prepare.shards import shard_name
from llm_modules.data.prepare.state import write_json_atomic
from llm_modules.data.prepare.work import Work
from llm_modules.data.sources import SourceFile

CHOICE = np.dtype([("doc", "i8"), ("shard", "i4")])


def source_id(source: SourceFile, number: int, offset: int) -> str:
    """A document's source id: the file's for a text file, ``FILE#LINE`` for a JSONL line."""
    return source.source_id if source.kind != "jsonl" else f"{source.source_id}#{offset + number}"


class _Layout:
    """Shard boundaries, as a writer appending kept lines in order would close its shards."""

    def __init__(self, max_bytes: int, max_docs: int | None):
        self.max_bytes, self.max_docs = max_bytes, max_docs
        self.index = self.bytes = self.documents = 0
        self.first_unit = 0
        self.shards: list[dict[str, Any]] = []

    def place(self, nbytes: int, unit: int) -> int:
        if not self.documents:
            self.first_unit = unit
        shard = self.index
        self.bytes += nbytes
        self.documents += 1
        if self.bytes >= self.max_bytes or (self.max_docs is not None and self.documents >= self.max_docs):
            self.close(unit)
        return shard

    def close(self, unit: int) -> None:
        self.shards.append({"name": shard_name(self.index), "documents": self.documents, "bytes": self.bytes,
                            "units": [self.first_unit, unit]})
        self.index, self.bytes, self.documents = self.index + 1, 0, 0

    def finish(self, unit: int) -> None:
        if self.documents:
            self.close(unit)


def select(work: Work) -> dict[str, Any]:
    """Decide the fate of every document and lay out the shards; returns (and writes) the plan."""
    start = time.perf_counter()
    config = work.config
    nd = config.near_duplicate
    index = LSHIndex(nd.num_perm, nd.threshold, nd.bands, nd.rows, nd.verify) if nd.enabled else None
    exact = config.exact_duplicate.enabled
    with_ids = config.output.source_id
    counts = Counts()
    dropped, seconds = counts.dropped, counts.stage_seconds
    seen: set[bytes] = set()
    layout = _Layout(int(config.output.shard_mb * 1e6), config.output.shard_docs)
    lines_before: dict[int, int] = {}
    offsets: list[int] = []
    for u, unit in enumerate(work.units):
        records = UnitRecords(work.units_dir, u)
        source = work.files[unit.file]
        offset = lines_before.get(unit.file, 0)
        offsets.append(offset)
        lines_before[unit.file] = offset + records.summary["lines"]
        for name, t in records.summary["stage_seconds"].items():
            seconds[name] = seconds.get(name, 0.0) + t
        docs, sigs = records.docs, records.sigs
        # columns as Python lists: per-row access to a structured array costs microseconds per field
        rules, chars, nbytes = docs["rule"].tolist(), docs["chars"].tolist(), docs["nbytes"].tolist()
        digests = docs["digest"].tobytes()
        contaminated, sig_rows = docs["contaminated"].tolist(), docs["sig_row"].tolist()
        out_chars, out_bytes = docs["out_chars"].tolist(), docs["out_bytes"].tolist()
        numbers, text_lens, pii = docs["number"].tolist(), docs["text_len"].tolist(), docs["pii"].tolist()
        keys_of = index.band_keys_of(sigs).tolist() if index is not None and len(sigs) else []
        kept_rows: list[int] = []
        kept_shards: list[int] = []
        for i, rule_index in enumerate(rules):
            counts.input_documents += 1
            counts.input_chars += chars[i]
            counts.input_bytes += nbytes[i]
            rule = None if rule_index == KEPT else RULES[rule_index]
            if rule is None and exact:
                digest = digests[16 * i:16 * i + 16]
                if digest in seen:
                    rule = "exact_duplicate"
                else:
                    seen.add(digest)
            if rule is None and contaminated[i]:
                rule = "decontamination"
            if rule is None and index is not None and sig_rows[i] >= 0:
                signature = sigs[sig_rows[i]]
                keys = keys_of[sig_rows[i]]
                if index.is_duplicate(signature, keys):
                    rule = "near_duplicate"
                else:
                    index.add(signature, keys)
            if rule is not None:
                dropped[rule][0] += 1
                dropped[rule][1] += chars[i]
                continue
            counts.kept_documents += 1
            counts.kept_chars += out_chars[i]
            counts.kept_bytes += out_bytes[i]
            for kind, n in zip(PII_KINDS, pii[i]):
                counts.pii[kind] += n
            sid = source_id(source, numbers[i], offset) if with_ids else None
            kept_rows.append(i)
            kept_shards.append(layout.place(len(output_line(b"", sid)) + text_lens[i], u))
        if kept_rows:
            choice = np.empty(len(kept_rows), dtype=CHOICE)
            choice["doc"], choice["shard"] = kept_rows, kept_shards
            np.save(work.select_dir / f"{unit_name(u)}.npy", choice)
    layout.finish(len(work.units) - 1)
    seconds["select"] = time.perf_counter() - start
    plan = {"counts": counts.to_dict(), "shards": layout.shards, "line_offsets": offsets}
    write_json_atomic(work.select_dir / "plan.json", plan)
    return plan


def read_plan(work: Work) -> dict[str, Any]:
    return json.loads((work.select_dir / "plan.json").read_text(encoding="utf-8"))
