"""How many lines of ``llm_modules/nn`` and ``llm_modules/models`` one CausalLM training step reads.

    python benchmarks/forward_lines.py              # total, per file, number of files
    python benchmarks/forward_lines.py --functions  # and every function counted, with its lines

The step is what ``training_step`` computes and what a reader has to follow to understand it:
``CausalLM.compute_loss`` on a batch of token ids, then ``backward``, on the architecture of
``configs/quickstart.yaml`` (rope, rmsnorm, swiglu, sdpa, pre-norm), built before tracing starts.
Under ``sys.settrace`` every Python function that runs is recorded; those defined in a file of
``llm_modules/nn`` or ``llm_modules/models`` count with their whole source (signature, docstring,
comments, body: ``inspect.getsourcelines``), each line once, so a function called in every layer,
or a lambda inside a counted function, adds nothing more. What runs at import or while the model
is built (class bodies, ``__init__``) does not count: it is not the forward path. The last line
gives, for comparison, the whole length of the files those functions live in.
"""

from __future__ import annotations

import argparse
import inspect
import sys
import threading
from collections import defaultdict
from pathlib import Path
from types import CodeType

import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PACKAGES = ("llm_modules/nn/", "llm_modules/models/")


def quickstart_model():
    """A CausalLM with configs/quickstart.yaml's model config."""
    from llm_modules import CausalLM

    settings = yaml.safe_load((ROOT / "configs" / "quickstart.yaml").read_text())
    return CausalLM(config=settings["model"]["init_args"]["config"])


def executed_code(step) -> set[CodeType]:
    """The code objects of every Python function that runs during ``step()`` (any thread)."""
    seen: set[CodeType] = set()

    def tracer(frame, event, arg):
        if event == "call":
            seen.add(frame.f_code)
        return None  # no line events: only which functions run

    before = sys.gettrace(), threading.gettrace()  # a coverage or debugger tracer comes back after
    threading.settrace(tracer)
    sys.settrace(tracer)
    try:
        step()
    finally:
        sys.settrace(before[0])
        threading.settrace(before[1])
    return seen


def counted_lines(codes: set[CodeType]) -> tuple[dict[str, set[int]], dict[str, list[tuple[str, int, int]]]]:
    """Per file (relative to the repository) the set of source lines of the counted functions, and
    the functions themselves as (qualified name, first line, line count)."""
    lines: dict[str, set[int]] = defaultdict(set)
    functions: dict[str, list[tuple[str, int, int]]] = defaultdict(list)
    spans = []
    for code in codes:
        path = Path(code.co_filename).resolve()
        if not path.is_relative_to(ROOT) or not path.relative_to(ROOT).as_posix().startswith(PACKAGES):
            continue
        source, first = inspect.getsourcelines(code)
        spans.append((path.relative_to(ROOT).as_posix(), code.co_qualname, first, len(source)))
    # Longest first, so a function nested in a counted one (a lambda, a comprehension) is not listed
    # again; on a tie (a comprehension that is its function's whole body) the outer name is listed.
    for relative, name, first, count in sorted(spans, key=lambda s: (-s[3], "<locals>" in s[1])):
        span = range(first, first + count)
        if not lines[relative].issuperset(span):
            functions[relative].append((name, first, count))
        lines[relative].update(span)
    return lines, functions


def measure() -> tuple[dict[str, set[int]], dict[str, list[tuple[str, int, int]]]]:
    torch.manual_seed(0)
    model = quickstart_model()
    model.train()
    batch = {"input_ids": torch.randint(0, model.config.vocab_size, (2, 32))}

    def step():
        model.compute_loss(batch)["loss"].backward()

    step()  # once untraced: lazy imports and first-call set-up are not the forward path
    model.zero_grad(set_to_none=True)
    return counted_lines(executed_code(step))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--functions", action="store_true", help="list every counted function")
    args = parser.parse_args(argv)
    lines, functions = measure()
    total = sum(len(v) for v in lines.values())
    for path in sorted(lines, key=lambda p: -len(lines[p])):
        print(f"{len(lines[path]):5d}  {path}")
        if args.functions:
            for name, first, count in sorted(functions[path], key=lambda f: f[1]):
                print(f"         {count:4d}  {name} (line {first})")
    print(f"{total:5d}  lines in {len(lines)} files (llm_modules/nn + llm_modules/models, one CausalLM training step)")
    whole = sum(len((ROOT / path).read_text().splitlines()) for path in lines)
    print(f"{whole:5d}  lines in those files as a whole (what a reader opening each file meets)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
