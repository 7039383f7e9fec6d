"""No import cycles between the packages of llm_modules, function-level imports included.

Function-level imports used to hide two cycles (models <-> training.finetune <-> interop <->
checkpoint <-> quantization; registry <-> nn <-> peft): nothing failed at import time, yet no layer
could be read, tested or replaced without the others. This test reads every module with ``ast`` and
counts every import statement wherever it sits (module level, functions, ``TYPE_CHECKING`` blocks),
plus ``importlib.import_module("llm_modules...")`` with a constant name, which is an import by
another spelling. Each subpackage of llm_modules and each top-level module is one node, and the
package itself (``llm_modules/__init__.py``) is one more: importing it from inside the package is an
edge to the top, which re-exports nearly everything, so it is a cycle. A cycle fails naming the
import lines that make it. Third-party imports are no internal edges, so lazy imports of optional
heavy dependencies are not affected.
"""

from __future__ import annotations

import ast
import collections
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "llm_modules"
TOP = "llm_modules"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def node_of(module: str) -> str:
    """``llm_modules.data.prepare.pii`` -> ``llm_modules.data``; the package itself is its own node."""
    return ".".join(module.split(".")[:2])


def _absolute(module: str, path: Path, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    base = package[: len(package) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(module: str, path: Path, known: set[str]) -> list[tuple[str, int]]:
    """(imported llm_modules module, line) for every import in the file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(module, path, node)
            targets = [source] + [f"{source}.{alias.name}" for alias in node.names]
        elif (isinstance(node, ast.Call) and isinstance(node.func, (ast.Attribute, ast.Name))
              and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            targets = [node.args[0].value]
        for target in targets:
            # ``import a.b.c`` runs a, a.b and a.b.c: the deepest known module is what the line reaches
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != module and (target, node.lineno) not in found:
                found.append((target, node.lineno))
    return found


def import_graph() -> tuple[dict[str, set[str]], dict[tuple[str, str], list[str]]]:
    """Edges between nodes, and for each edge the import lines that make it (``file:line -> module``)."""
    modules = _modules()
    known = set(modules)
    edges: dict[str, set[str]] = collections.defaultdict(set)
    lines: dict[tuple[str, str], list[str]] = collections.defaultdict(list)
    for module, path in modules.items():
        for target, lineno in imports_of(module, path, known):
            a, b = node_of(module), node_of(target)
            if a != b:
                edges[a].add(b)
                lines[a, b].append(f"{path.relative_to(ROOT.parent)}:{lineno} imports {target}")
    return edges, lines


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    nodes = sorted(set(edges) | {b for targets in edges.values() for b in targets})
    for start in nodes:
        if start in index:
            continue
        work = [(start, iter(sorted(edges.get(start, ()))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            v, children = work[-1]
            for w in children:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(edges.get(w, ())))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    component = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        component.append(w)
                        if w == v:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def describe(component: list[str], edges, lines) -> str:
    inside = set(component)
    text = [f"import cycle between {', '.join(component)}:"]
    for a in component:
        for b in sorted(edges.get(a, ()) & inside):
            text.append(f"  {a} -> {b}:")
            text.extend(f"    {line}" for line in lines[a, b][:4])
            if len(lines[a, b]) > 4:
                text.append(f"    ... and {len(lines[a, b]) - 4} more")
    return "\n".join(text)


def test_no_import_cycles_between_packages():
    edges, lines = import_graph()
    found = cycles(edges)
    assert not found, "\n".join(describe(c, edges, lines) for c in found)


def test_nothing_inside_imports_the_top_level_namespace():
    """``llm_modules/__init__.py`` re-exports the public names (the LightningModules, from_hf, ...):
    a module inside that imports it depends on everything above itself, a cycle in waiting."""
    edges, lines = import_graph()
    importers = sorted(a for a, targets in edges.items() if TOP in targets)
    assert not importers, "\n".join(line for a in importers for line in lines[a, TOP])


def test_the_registry_imports_no_component_and_the_package_serves_the_built_ins():
    """The bottom layer holds the registries and loads entry-point plugins; the built-ins register
    when their packages are imported, which ``llm_modules.NORMS`` (and friends) do on first use."""
    import subprocess
    import sys

    code = ("import sys, llm_modules.registry\n"
            "assert 'llm_modules.nn' not in sys.modules and 'torch' not in sys.modules\n"
            "from llm_modules import NORMS, PEFT_METHODS\n"
            "assert {'layernorm', 'rmsnorm'} <= set(NORMS.names()) and 'lora' in PEFT_METHODS.names()\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_the_graph_sees_every_kind_of_import(tmp_path):
    """The reader is what the test relies on: function-level, relative, TYPE_CHECKING and importlib
    imports all make edges, third-party imports none, and a two-node cycle is reported by line."""
    package = tmp_path / "llm_modules"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("from . import inner\n")
    (package / "sub" / "inner.py").write_text(
        "import torch\nfrom typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from llm_modules import low\n"
        "def f():\n    from ..other import g\n    import importlib\n    importlib.import_module('llm_modules.third')\n"
    )
    for name in ("low", "other", "third"):
        (package / f"{name}.py").write_text("import llm_modules.sub.inner\n" if name == "other" else "")
    global ROOT
    saved, ROOT = ROOT, package
    try:
        edges, lines = import_graph()
    finally:
        ROOT = saved
    assert edges["llm_modules.sub"] == {"llm_modules", "llm_modules.low", "llm_modules.other", "llm_modules.third"}
    found = cycles(edges)
    assert found == [["llm_modules.other", "llm_modules.sub"]]
    message = describe(found[0], edges, lines)
    assert "llm_modules/sub/inner.py:6 imports llm_modules.other" in message
    assert "llm_modules/other.py:1 imports llm_modules.sub.inner" in message
