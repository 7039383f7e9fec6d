"""``llm-modules registry``: what every config slot accepts, and which plugin provides it.

Entry-point plugins are loaded first (a broken one is reported on stderr by name and skipped);
``--plugins`` imports local modules too, so a component under development shows up before it is
packaged.
"""

from __future__ import annotations

import argparse
import json
import sys

from llm_modules.registry import REGISTRIES, load_plugins


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llm-modules registry",
        description="List every registered component: slot, name, one-line doc and providing plugin.",
    )
    parser.add_argument("--format", choices=("table", "json"), default="table",
                        help="table for reading (default); json: {slot: [{name, doc, provider}, ...]}")
    parser.add_argument("--plugins", nargs="+", action="extend", default=[], metavar="MODULE",
                        help="import these modules (e.g. my_pkg.components) before listing; "
                             "the current directory is searched too")
    return parser


def catalogue() -> dict[str, list[dict[str, str]]]:
    """Every slot with its names, one-line docs and providers (what ``llm-modules registry`` prints):
    the built-ins (imported here, as their packages register them on import) and every plugin."""
    import llm_modules.nn  # noqa: F401  (registers the built-in components)
    import llm_modules.peft  # noqa: F401  (and the built-in fine-tuning methods)

    load_plugins()
    return {
        slot: [{"name": e.name, "doc": e.doc, "provider": e.provider} for e in reg.entries()]
        for slot, reg in REGISTRIES.items()
    }


def format_table(listing: dict[str, list[dict[str, str]]]) -> str:
    """One block per slot: a heading, then aligned name / provider / doc rows."""
    rows = [entry for entries in listing.values() for entry in entries]
    name_w = max((len(e["name"]) for e in rows), default=4)
    prov_w = max((len(e["provider"]) for e in rows), default=8)
    lines: list[str] = []
    for slot, entries in listing.items():
        registry = REGISTRIES.get(slot)
        about = f" ({registry.description})" if registry is not None and registry.description else ""
        lines.append(f"{slot}{about}")
        for e in entries:
            lines.append(f"  {e['name']:<{name_w}}  {e['provider']:<{prov_w}}  {e['doc']}".rstrip())
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def run(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    load_plugins(args.plugins)
    listing = catalogue()
    if args.format == "json":
        print(json.dumps(listing, indent=2))
    else:
        sys.stdout.write(format_table(listing))
    return 0
