"""Command line: ``llm-modules registry | convert | ...``."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    print("llm-modules: commands arrive with the CLI change", file=sys.stderr)
    return 2
