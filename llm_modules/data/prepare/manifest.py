"""The manifest of a prepared output directory, and the rules for reusing such a directory.

Why a manifest: it is the one file that says "this directory is an ``llm-modules data prepare``
output, made with this config from these inputs, and it is (or is not yet) complete". It is written
before the first shard with ``complete: false`` and rewritten last, atomically, with ``complete: true``
and the list of shards; so

- a rerun can tell *resume* (same config, same inputs, unfinished), *done* (complete), *refuse*
  (different config or inputs: ``--overwrite`` starts over) and *not ours* (a non-empty directory
  without a manifest: never touched, even with ``--overwrite``);
- while a run works, it holds an exclusive lock on ``.prepare.lock`` in the directory, so a second
  run into the same directory is refused instead of interleaving with it;
- ``TextDataModule`` (through ``data.sources``) can read a prepared directory as exactly its shards,
  and refuse one whose preparation has not finished.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from llm_modules.file_lock import LockHeld, hold
from llm_modules.registry import ConfigError

MANIFEST = "prepare-manifest.json"
FORMAT = "llm-modules.data.prepare"
VERSION = 1
REPORT = "report.json"


def read_manifest(directory: Path) -> dict[str, Any] | None:
    """The manifest of ``directory``, or None when it has none (or a file of that name not ours)."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) and data.get("format") == FORMAT else None


def is_prepared(directory: Path) -> bool:
    return read_manifest(directory) is not None


def prepared_shards(directory: Path, where: str = "data.paths") -> list[Path] | None:
    """The shard files of a prepared directory, in order; None when ``directory`` is not one.

    Raises ConfigError when the preparation has not finished or a shard is missing.
    """
    manifest = read_manifest(directory)
    if manifest is None:
        return None
    if not manifest.get("complete"):
        raise ConfigError(
            f"{where}: {str(directory)!r} holds an unfinished 'llm-modules data prepare' run (interrupted or "
            "still running); rerun the same 'llm-modules data prepare' command to finish it, then train"
        )
    shards = [Path(directory) / s["name"] for s in manifest.get("shards", [])]
    missing = [s.name for s in shards if not s.is_file()]
    if missing:
        raise ConfigError(f"{where}: {str(directory)!r} lacks shard {missing[0]} listed in its {MANIFEST}; "
                          "rerun 'llm-modules data prepare' with --overwrite to rebuild it")
    if not shards:
        raise ConfigError(f"{where}: the preparation in {str(directory)!r} kept no documents (see its {REPORT}); "
                          "relax its filters or leave it out of the data")
    return shards


def owned_paths(directory: Path) -> list[Path]:
    """The files and folders a preparation writes into its directory (and may remove)."""
    from llm_modules.data.prepare.shards import SHARD_RE
    from llm_modules.data.prepare.state import STATE_DIR

    out = []
    for path in directory.iterdir():
        if (SHARD_RE.match(path.name) or path.name in (MANIFEST, REPORT, STATE_DIR)
                or path.name in (MANIFEST + ".tmp", REPORT + ".tmp")):
            out.append(path)
    return out


def remove_owned(directory: Path) -> None:
    for path in owned_paths(directory):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted names of the settings that differ between two config dicts."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new), key=str):
            out += differences(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    return [] if old == new else [prefix.rstrip(".")]


LOCK = ".prepare.lock"


def check_writable(out: Path) -> None:
    """Refuse a path that is a file, or a non-empty directory that no preparation wrote (read-only check)."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {str(out)!r} is a file; give a directory (it is created if missing)")
    if out.is_dir() and read_manifest(out) is None and any(p.name != LOCK for p in out.iterdir()):
        raise ConfigError(
            f"--out {str(out)!r} is not empty and was not written by 'llm-modules data prepare' (no "
            f"{MANIFEST}); refusing to write into it, even with --overwrite: choose a new or empty directory"
        )


def lock(out: Path):
    """Hold an exclusive lock on ``out`` (created) for as long as the returned file stays open, so two
    runs never write one output; None where the platform has no ``fcntl`` (llm_modules.file_lock)."""
    out.mkdir(parents=True, exist_ok=True)
    try:
        return hold(out / LOCK)
    except LockHeld as held:
        raise ConfigError(f"--out {str(out)!r} is being written by another 'llm-modules data prepare' right "
                          f"now{held.by}; wait for it to finish (or stop it) and rerun") from None


def open_output(out: Path, settings: dict[str, Any], fingerprint: str, overwrite: bool) -> str:
    """Decide what to do with the output directory: ``"fresh"``, ``"resume"`` or ``"complete"``.

    ``settings`` is the JSON form of the semantic config. Raises ConfigError when the directory must
    not be used (not ours, or made with other settings or inputs without ``overwrite``).
    """
    check_writable(out)
    manifest = read_manifest(out) if out.exists() else None
    if manifest is None:
        return "fresh"
    if overwrite:
        remove_owned(out)
        return "fresh"
    changed = differences(manifest.get("config"), settings)
    if changed or manifest.get("inputs_fingerprint") != fingerprint:
        what = (f"other settings ({', '.join(changed[:4])}{', ...' if len(changed) > 4 else ''} differ)" if changed
                else "other inputs (files were added, removed or modified since)")
        state = "a complete" if manifest.get("complete") else "an unfinished"
        raise ConfigError(
            f"--out {str(out)!r} holds {state} preparation made with {what}; rerun with the same settings and "
            "inputs to reuse it, pass --overwrite to start over, or choose another --out"
        )
    return "complete" if manifest.get("complete") else "resume"
