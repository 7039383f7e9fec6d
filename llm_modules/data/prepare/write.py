"""The write stage: each shard written on its own from the select stage's layout.

Why shards can be written independently: ``select`` fixed which kept documents each shard holds,
in input order, so a task writes shard ``k`` by reading the records of the units it spans, and the
bytes are those a single writer would produce. A shard is written as ``shard-NNNNN.jsonl.partial``
and renamed only when complete and fsynced (``shards``), so a reader never sees half of one, and a
rerun after a kill rewrites exactly the shards that lack their final name.
"""

from __future__ import annotations

import os

import numpy as np

from llm_modules.data.prepare.records import UnitRecords, output_line, unit_name
from llm_modules.data.prepare.select import source_id
from llm_modules.data.prepare.state import fsync_dir
from llm_modules.data.prepare.work import Work


def write_shard(work: Work, plan: dict, k: int) -> None:
    shard = plan["shards"][k]
    final = work.out / shard["name"]
    if final.is_file() and final.stat().st_size == shard["bytes"]:
        return  # written before an interruption
    partial = work.out / (shard["name"] + ".partial")
    with_ids = work.config.output.source_id
    first, last = shard["units"]
    with open(partial, "wb") as f:
        for u in range(first, last + 1):
            path = work.select_dir / f"{unit_name(u)}.npy"
            if not path.is_file():
                continue
            choice = np.load(path, allow_pickle=False)
            rows = choice["doc"][choice["shard"] == k]
            if not len(rows):
                continue
            records = UnitRecords(work.units_dir, u)
            texts = records.texts()
            source = work.files[work.units[u].file]
            offset = plan["line_offsets"][u]
            for doc in records.docs[rows]:
                start, length = int(doc["text_off"]), int(doc["text_len"])
                sid = source_id(source, int(doc["number"]), offset) if with_ids else None
                f.write(output_line(texts[start:start + length], sid))
        f.flush()
        os.fsync(f.fileno())
    if partial.stat().st_size != shard["bytes"]:
        raise RuntimeError(f"{partial}: wrote {partial.stat().st_size} bytes where the layout says {shard['bytes']}")
    os.replace(partial, final)
    fsync_dir(work.out)
