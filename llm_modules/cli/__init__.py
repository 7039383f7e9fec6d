"""Command line entry point ``llm-modules``: dispatches to the subcommands."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    print("llm-modules: subcommands are being added", file=sys.stderr)
    return 2
