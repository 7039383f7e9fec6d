"""Output shard names: ``shard-NNNNN.jsonl``, written as ``shard-NNNNN.jsonl.partial`` and renamed when
complete (``write``), so a reader (``TextDataModule``, a person with ``wc -l``) never mistakes an
unfinished file for a finished one. A shard is closed once it holds ``output.shard_mb`` MB or
``output.shard_docs`` documents (checked after each document, so a shard may exceed the size by one
document; none is ever empty): ``select`` lays them out.
"""

from __future__ import annotations

import re

SHARD_RE = re.compile(r"^shard-(\d{5,})\.jsonl(\.partial)?$")


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.jsonl"
