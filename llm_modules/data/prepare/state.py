"""Checkpoint state: what a rerun needs to continue an interrupted preparation exactly where it stopped.

Why this shape: the state that grows with the corpus (the content hashes of every document seen by
the exact-duplicate stage, the MinHash signatures of every kept document) lives in *append-only
record logs*, and a small ``state.json`` says how many records of each log, how many bytes of the
open shard, and which input position belong to the last checkpoint. A checkpoint is then cheap
(fsync the logs and the shard, atomically replace ``state.json``) however large the corpus, and a
crash at any moment leaves a consistent past checkpoint: on resume every log and the open shard are
truncated back to their committed length, and the in-memory structures (hash set, LSH buckets) are
rebuilt by replaying the logs. Whatever was written after the last checkpoint is simply redone.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

STATE_DIR = ".prepare-state"
STATE_FILE = "state.json"
STATE_VERSION = 1


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some platforms cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to ``path`` via a temporary file and a rename: readers see the old or the new file,
    never half of one."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


class RecordLog:
    """An append-only file of fixed-size records, truncated to ``committed`` records when opened."""

    def __init__(self, path: Path, record_size: int, committed: int = 0):
        self.path, self.record_size = path, record_size
        size = committed * record_size
        if committed and (not path.exists() or path.stat().st_size < size):
            raise RuntimeError(f"{path} holds fewer than the {committed} records of the last checkpoint")
        with open(path, "ab") as f:
            f.truncate(size)
        self.count = committed
        self._file = open(path, "ab")  # noqa: SIM115 (open until finish/close)

    def records(self) -> bytes:
        """The committed records (read before appending more)."""
        self._file.flush()
        with open(self.path, "rb") as f:
            return f.read(self.count * self.record_size)

    def append(self, record: bytes) -> None:
        self._file.write(record)
        self.count += 1

    def sync(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()


def read_state(state_dir: Path) -> dict[str, Any] | None:
    path = state_dir / STATE_FILE
    if not path.is_file():
        return None
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return state if state.get("version") == STATE_VERSION else None
