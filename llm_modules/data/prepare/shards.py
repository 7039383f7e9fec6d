"""JSONL output shards that are never half-written under their final name.

Why: a reader (``TextDataModule``, a person with ``wc -l``) must not mistake an unfinished file for a
finished one. The open shard is ``shard-NNNNN.jsonl.partial``; it is renamed to ``shard-NNNNN.jsonl``
only after it is flushed, fsynced and closed. On resume the open shard is truncated back to the size
recorded at the last checkpoint (a shard closed after that checkpoint is renamed back first), and any
later shard is removed, so the output continues byte for byte as an uninterrupted run would write it.

A shard is closed once it holds ``max_bytes`` bytes or ``max_docs`` documents (checked after each
document, so a shard may exceed ``max_bytes`` by one document; none is ever empty).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from llm_modules.data.prepare.state import fsync_dir

SHARD_RE = re.compile(r"^shard-(\d{5,})\.jsonl(\.partial)?$")


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.jsonl"


class ShardWriter:
    def __init__(self, out: Path, max_bytes: int, max_docs: int | None, state: dict[str, Any] | None = None):
        self.out, self.max_bytes, self.max_docs = out, max_bytes, max_docs
        state = state or {"index": 0, "bytes": 0, "documents": 0, "shards": []}
        self.index, self.bytes, self.documents = state["index"], state["bytes"], state["documents"]
        self.shards: list[dict[str, Any]] = [dict(s) for s in state["shards"]]
        self._remove_later_shards()
        partial, final = self._partial(), out / shard_name(self.index)
        if final.exists():  # closed after the last checkpoint: reopen it
            os.replace(final, partial)
        if self.bytes and (not partial.exists() or partial.stat().st_size < self.bytes):
            raise RuntimeError(f"{partial} is shorter than the {self.bytes} bytes of the last checkpoint")
        with open(partial, "ab") as f:
            f.truncate(self.bytes)
        self._file = open(partial, "ab")  # noqa: SIM115 (open until finish/close)

    def _partial(self) -> Path:
        return self.out / (shard_name(self.index) + ".partial")

    def _remove_later_shards(self) -> None:
        for path in self.out.iterdir():
            m = SHARD_RE.match(path.name)
            if m and int(m.group(1)) > self.index:
                path.unlink()

    def write(self, line: bytes) -> None:
        self._file.write(line)
        self.bytes += len(line)
        self.documents += 1

    def full(self) -> bool:
        return self.bytes >= self.max_bytes or (self.max_docs is not None and self.documents >= self.max_docs)

    def sync(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())

    def _close_current(self) -> None:
        self.sync()
        self._file.close()
        name = shard_name(self.index)
        os.replace(self._partial(), self.out / name)
        fsync_dir(self.out)
        self.shards.append({"name": name, "documents": self.documents, "bytes": self.bytes})

    def rotate(self) -> None:
        """Close the current shard under its final name and open the next one."""
        self._close_current()
        self.index, self.bytes, self.documents = self.index + 1, 0, 0
        self._file = open(self._partial(), "ab")  # noqa: SIM115 (open until finish/close)

    def finish(self) -> None:
        """Close the last shard (removed if it holds no document)."""
        if self.documents:
            self._close_current()
        else:
            self._file.close()
            self._partial().unlink(missing_ok=True)

    def close(self) -> None:
        """Close without finishing (interrupted)."""
        if not self._file.closed:
            self._file.close()

    def state(self) -> dict[str, Any]:
        return {"index": self.index, "bytes": self.bytes, "documents": self.documents, "shards": self.shards}
