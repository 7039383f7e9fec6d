"""``data.paths`` / ``data.weights`` / ``data.mixture`` checked into one spec per source.

No disk access: the settings are validated when the data module is built, so a bad mixture fails
before anything is read, tokenized or trained, with the field and the fix named.
"""

from __future__ import annotations

import difflib
import math
from typing import Any

from llm_modules.registry import ConfigError

MIXTURE_KEYS = ("paths", "weight", "name", "pattern", "text_field")


def source_specs(paths: list[str] | None, weights: list[float] | None, mixture: list[dict] | None,
                 pattern: list[str] | str | None, text_field: str) -> list[dict[str, Any]]:
    """One dict per source (paths, weight, the config field it came from, a unique name, pattern,
    text field, and for ``data.paths`` with weights its index)."""
    return _unique_names(_specs(paths, weights, mixture, pattern, text_field))


def _specs(paths, weights, mixture, pattern, text_field) -> list[dict[str, Any]]:
    if paths and mixture:
        raise ConfigError("data: give either data.paths or data.mixture, not both")
    if mixture:
        if weights:
            raise ConfigError("data.weights goes with data.paths; in data.mixture give each entry a weight")
        specs = []
        for i, entry in enumerate(mixture):
            where = f"data.mixture[{i}]"
            if not isinstance(entry, dict) or "paths" not in entry:
                raise ConfigError(f"{where}: expected a mapping like {{paths: [...], weight: 0.5}}; got {entry!r}")
            for key in entry:
                if key not in MIXTURE_KEYS:
                    close = difflib.get_close_matches(key, MIXTURE_KEYS, n=1)
                    hint = f" (did you mean {close[0]!r}?)" if close else ""
                    raise ConfigError(f"{where}: unknown key {key!r}{hint}; keys: {', '.join(MIXTURE_KEYS)}")
            given = entry["paths"]
            given = [given] if isinstance(given, str) else list(given or [])
            weight = _weight(f"{where}.weight", entry.get("weight", 1.0))
            specs.append({"paths": given, "weight": weight, "field": f"{where}.paths",
                          "name": str(entry.get("name") or ",".join(map(str, given))),
                          "pattern": entry.get("pattern", pattern),
                          "text_field": entry.get("text_field", text_field)})
        return specs
    if not paths:
        raise ConfigError("data.paths: no data given; list files, directories, globs, JSONL files or "
                          "'python-stdlib' (or use data.mixture)")
    if weights is None:
        return [{"paths": paths, "weight": 1.0, "field": "data.paths", "name": ",".join(paths),
                 "pattern": pattern, "text_field": text_field}]
    if len(weights) != len(paths):
        raise ConfigError(f"data.weights has {len(weights)} entries for {len(paths)} data.paths; "
                          "give one weight per path")
    return [{"paths": [p], "weight": _weight(f"data.weights[{i}]", w), "field": "data.paths", "name": p,
             "pattern": pattern, "text_field": text_field, "index": i}
            for i, (p, w) in enumerate(zip(paths, weights))]


def _unique_names(specs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seen: dict[str, int] = {}
    for spec in specs:
        name = spec["name"]
        if name in seen:
            seen[name] += 1
            spec["name"] = f"{name}#{seen[name]}"
        else:
            seen[name] = 0
    return specs


def _weight(field: str, value: Any) -> float:
    try:
        w = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{field}={value!r} must be a positive number") from None
    if not math.isfinite(w) or w <= 0:
        raise ConfigError(f"{field}={value!r} must be a positive number")
    return w
