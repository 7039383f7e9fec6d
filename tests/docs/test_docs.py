"""The docs are executed: every page under docs/ is one test that runs its code blocks in order.

Rules (what a page author can rely on):

- A fenced ``python`` (or ``py``) block runs in this process, in page order, in one namespace per
  page, so later blocks see earlier names.
- A fenced ``bash`` block runs as ``bash -e`` in a subprocess. ``PATH`` starts with this
  interpreter's ``bin`` folder (so ``llm-modules`` is the installed console script) and
  ``OMP_NUM_THREADS=1``. Lines ending in ``\\`` continue on the next line.
- Both run in a fresh temporary folder per page, which holds ``configs`` (a link to the repo's
  ``configs/``) and ``tiny-corpus/`` (40 small Python files: a corpus for test-size overrides).
  The folder is also on ``sys.path`` for the page's Python blocks, as the working directory is for
  ``python`` run there.
- Any other fence (yaml, toml, text, console, json, ...) is shown, not run.
- An HTML comment on the line(s) right before a fence changes that block:

  ``<!-- docs-test: skip REASON -->``      not run; the reason is required (skips are deliberate).
  ``<!-- docs-test: file PATH -->``        the block's text is written to PATH (relative to the page's
                                           folder) instead of being run; works on any fence.
  ``<!-- docs-test: args EXTRA ARGS -->``  (bash) EXTRA ARGS are appended to every
                                           ``llm-modules fit|validate|test|predict`` command of the
                                           block, so the page shows the real command and the test
                                           runs it at a tiny size. Shell syntax: quote brackets.

  A ``docs-test`` comment that is not followed by a fence, or names an unknown directive, fails.
- A failing block fails the page's test with the page, the block's line, and the tail of its output.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from _fit_helpers import reap

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.rglob("*.md")) if DOCS.is_dir() else []
# The tutorials, the longest pages, run from tests/docs/test_docs_tutorials.py: a file of their own, so
# that pytest-xdist (--dist loadfile) gives them a worker of their own beside the other pages.
TUTORIALS = [page for page in PAGES if page.parent.name == "tutorials"]
# ... in two files, about equally long (each over three minutes on 2 cores): these pages run from
# test_docs_tutorials_more.py, every other tutorial (a new page too) from test_docs_tutorials.py.
MORE_TUTORIALS = ("evaluate.md", "3d-parallelism.md", "scale-out.md", "plan-a-run.md", "prepare-data.md")

PYTHON = {"python", "py", "python3"}
BASH = {"bash"}
DIRECTIVES = {"skip", "file", "args"}
CLI_RUNS = re.compile(r"\bllm-modules\s+(fit|validate|test|predict)\b")
MARKER = re.compile(r"^\s*<!--\s*docs-test:\s*(\S+)\s*(.*?)\s*-->\s*$")
FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`]*)$")
BASH_TIMEOUT_S = 300
TAIL = 3000

SNIPPETS = [
    "def add(a, b):\n    return a + b\n",
    "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n",
    "for i in range(10):\n    print(i * i)\n",
    "import os\nprint(os.path.join('a', 'b'))\n",
]


@dataclass
class Block:
    line: int  # 1-based line of the opening fence
    lang: str
    text: str
    directives: dict[str, str] = field(default_factory=dict)


def parse(page: Path) -> list[Block]:
    """The fenced blocks of a page with the docs-test directives that precede them."""
    lines = page.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    pending: dict[str, str] = {}
    pending_line = 0
    i = 0
    while i < len(lines):
        line = lines[i]
        marker = MARKER.match(line)
        if marker:
            name, value = marker.group(1), marker.group(2)
            where = f"{rel(page)}:{i + 1}"
            if name not in DIRECTIVES:
                raise ValueError(f"{where}: unknown docs-test directive {name!r}; use one of {sorted(DIRECTIVES)}")
            if not value:
                what = {"skip": "a reason", "file": "a path", "args": "the extra arguments"}[name]
                raise ValueError(f"{where}: 'docs-test: {name}' needs {what}")
            pending[name] = value
            pending_line = pending_line or i + 1
            i += 1
            continue
        fence = FENCE.match(line)
        if fence is None:
            if pending and line.strip():
                raise ValueError(
                    f"{rel(page)}:{pending_line}: a docs-test comment must come right before a fenced block"
                )
            i += 1
            continue
        indent, opener = fence.group("indent"), fence.group("fence")
        info = fence.group("info").strip()
        lang = re.split(r"[\s{]", info, maxsplit=1)[0].lstrip(".").lower() if info else ""
        body = []
        j = i + 1
        closing = re.compile(rf"^\s*{re.escape(opener[0])}{{{len(opener)},}}\s*$")
        while j < len(lines) and not closing.match(lines[j]):
            body.append(lines[j][len(indent):] if lines[j].startswith(indent) else lines[j].lstrip())
            j += 1
        if j == len(lines):
            raise ValueError(f"{rel(page)}:{i + 1}: the fence opened here is never closed")
        blocks.append(Block(i + 1, lang, "\n".join(body) + "\n", pending))
        pending, pending_line = {}, 0
        i = j + 1
    if pending:
        raise ValueError(f"{rel(page)}:{pending_line}: a docs-test comment must come right before a fenced block")
    return blocks


def rel(path: Path) -> str:
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


def logical_lines(script: str) -> list[str]:
    """Join backslash-continued lines, as bash reads them."""
    out, current = [], ""
    for line in script.splitlines():
        if line.endswith("\\"):
            current += line[:-1]
            continue
        out.append(current + line)
        current = ""
    if current:
        out.append(current)
    return out


def command_end(line: str, start: int) -> int:
    """Where the simple command starting at ``start`` ends: an unquoted |, &, ;, ), a comment, or the end."""
    quote = None
    k = start
    while k < len(line):
        c = line[k]
        if quote:
            if c == "\\" and quote == '"':
                k += 2
                continue
            if c == quote:
                quote = None
        elif c == "\\":
            k += 2
            continue
        elif c in "'\"":
            quote = c
        elif c in "|&;)":
            return k
        elif c == "#" and line[k - 1].isspace():
            return k
        k += 1
    return len(line)


def with_args(script: str, extra: str) -> str:
    """Append ``extra`` to each ``llm-modules fit|validate|test|predict`` command of a bash script."""
    out = []
    for line in logical_lines(script):
        pos = 0
        while (m := CLI_RUNS.search(line, pos)) is not None:
            end = command_end(line, m.end())
            head = line[:end].rstrip()
            line = f"{head} {extra}" + (" " if end < len(line) else "") + line[end:]
            pos = len(head) + len(extra) + 1
        out.append(line)
    return "\n".join(out) + "\n"


def tail(text: str) -> str:
    return text if len(text) <= TAIL else "..." + text[-TAIL:]


@pytest.fixture
def page_dir(tmp_path, monkeypatch):
    (tmp_path / "configs").symlink_to(ROOT / "configs", target_is_directory=True)
    corpus = tmp_path / "tiny-corpus"
    corpus.mkdir()
    for i in range(40):
        body = "".join(SNIPPETS[(i + j) % len(SNIPPETS)] for j in range(6))
        (corpus / f"mod{i:02d}.py").write_text(f"# module {i}\n{body}")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    # Nothing a page runs writes to the user's cache.
    monkeypatch.setenv("LLM_MODULES_CACHE", str(tmp_path / ".cache" / "llm-modules"))
    yield tmp_path


@pytest.fixture
def isolated_registries(page_dir):
    """Components and modules a page registers or imports are gone after it."""
    import llm_modules.nn  # noqa: F401  (the built-ins register on import: they are not the page's)
    import llm_modules.peft  # noqa: F401
    import llm_modules.registry as registry

    before = {slot: set(reg.names()) for slot, reg in registry.REGISTRIES.items()}
    loaded = set(registry._loaded_modules)
    modules = set(sys.modules)
    yield
    for slot, reg in registry.REGISTRIES.items():
        for name in set(reg.names()) - before[slot]:
            reg.unregister(name)
    registry._loaded_modules.intersection_update(loaded)
    for name in set(sys.modules) - modules:
        origin = getattr(sys.modules[name], "__file__", None) or ""
        if origin.startswith(str(page_dir)):
            del sys.modules[name]


def run_python(block: Block, page: Path, namespace: dict) -> None:
    code = compile(block.text, f"{rel(page)}:{block.line}", "exec")
    try:
        exec(code, namespace)
    except Exception:
        pytest.fail(
            f"{rel(page)}, python block at line {block.line} failed:\n{tail(traceback.format_exc())}",
            pytrace=False,
        )


def run_bash(block: Block, page: Path, cwd: Path) -> None:
    script = block.text
    if "args" in block.directives:
        script = with_args(script, block.directives["args"])
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    # A session of its own, so that a block that times out is killed with everything it started
    proc = subprocess.Popen(["bash", "-e", "-c", script], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=BASH_TIMEOUT_S)
    except subprocess.TimeoutExpired as late:
        pytest.fail(f"{rel(page)}, bash block at line {block.line} ran past {BASH_TIMEOUT_S} s:\n{script}\n"
                    f"--- output tail ---\n{tail(str(late.stdout or '') + str(late.stderr or ''))}", pytrace=False)
    finally:
        reap(proc)
    done = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    sys.stdout.write(done.stdout)
    sys.stderr.write(done.stderr)
    if done.returncode != 0:
        pytest.fail(
            f"{rel(page)}, bash block at line {block.line} exited with {done.returncode}:\n{script}"
            f"--- stdout tail ---\n{tail(done.stdout)}\n--- stderr tail ---\n{tail(done.stderr)}",
            pytrace=False,
        )


def write_file(block: Block, cwd: Path) -> None:
    target = cwd / block.directives["file"]
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(block.text)


@pytest.mark.parametrize("page", [page for page in PAGES if page not in TUTORIALS], ids=rel)
def test_page_runs(page, page_dir, isolated_registries):
    run_page(page, page_dir)


def run_page(page: Path, page_dir: Path) -> None:
    """Every block of ``page`` in order: Python in one namespace, bash in ``page_dir``, files written."""
    try:
        blocks = parse(page)
    except ValueError as err:
        pytest.fail(str(err), pytrace=False)
    namespace: dict = {"__name__": "__main__"}
    for block in blocks:
        if "skip" in block.directives:
            continue
        if "file" in block.directives:
            write_file(block, page_dir)
        elif block.lang in PYTHON:
            run_python(block, page, namespace)
        elif block.lang in BASH:
            run_bash(block, page, page_dir)


# ---- the harness's own rules, on small made-up pages ------------------------------------------------------

def test_parse_reads_directives_and_refuses_a_skip_without_reason(tmp_path):
    page = tmp_path / "p.md"
    page.write_text(
        "text\n\n<!-- docs-test: file pkg/a.toml -->\n```toml\nx = 1\n```\n\n"
        "<!-- docs-test: args --trainer.max_steps 2 -->\n```bash\nllm-modules fit --config c.yaml\n```\n"
        "- item\n\n    ```python\n    print(1)\n    ```\n"
    )
    blocks = parse(page)
    assert [(b.lang, b.directives) for b in blocks] == [
        ("toml", {"file": "pkg/a.toml"}), ("bash", {"args": "--trainer.max_steps 2"}), ("python", {}),
    ]
    assert blocks[2].text == "print(1)\n" and blocks[0].line == 4
    page.write_text("<!-- docs-test: skip -->\n```python\nx\n```\n")
    with pytest.raises(ValueError, match="needs a reason"):
        parse(page)
    page.write_text("<!-- docs-test: skip why -->\nprose\n```python\nx\n```\n")
    with pytest.raises(ValueError, match="right before a fenced block"):
        parse(page)
    page.write_text("<!-- docs-test: skipp why -->\n```python\nx\n```\n")
    with pytest.raises(ValueError, match="unknown docs-test directive"):
        parse(page)


def test_args_go_to_each_training_command_before_pipes_redirects_and_comments():
    script = (
        "llm-modules fit --config a.yaml   # train\n"
        "llm-modules fit --config a.yaml \\\n  --model.config.position alibi\n"
        "llm-modules fit --config a.yaml --print_config > my.yaml\n"
        "llm-modules validate --ckpt_path 'x#y.ckpt' | tail -1 && llm-modules test --config a.yaml\n"
        "llm-modules registry\n"
    )
    assert with_args(script, "-X 1").splitlines() == [
        "llm-modules fit --config a.yaml -X 1 # train",
        "llm-modules fit --config a.yaml   --model.config.position alibi -X 1",
        "llm-modules fit --config a.yaml --print_config > my.yaml -X 1",
        "llm-modules validate --ckpt_path 'x#y.ckpt' -X 1 | tail -1 && llm-modules test --config a.yaml -X 1",
        "llm-modules registry",
    ]


def test_registry_placeholders_print_the_live_registry():
    """Pages list a slot's names as ``{{ registry:SLOT }}`` (scripts/docs_hooks.py fills them in at
    build time from the registry); every placeholder on every page names a real slot and becomes
    exactly the built-in names registered now."""
    import importlib.util

    from llm_modules import REGISTRIES

    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "scripts" / "docs_hooks.py")
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    # what the site build reads (a fresh interpreter), which must be this process's registry
    names = hooks.builtin_names()
    assert names == {slot: [e.name for e in reg.entries() if e.provider == "llm_modules"]
                     for slot, reg in REGISTRIES.items()}
    used = 0
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        used += len(hooks.PLACEHOLDER.findall(text))
        filled = hooks.fill_registry(text, names, rel(page))
        assert "{{ registry:" not in filled, rel(page)
    assert used, "no page prints the registry"
    assert hooks.fill_registry("{{ registry:norm:code }}", names) == ", ".join(f"`{n}`" for n in names["norm"])
    with pytest.raises(RuntimeError, match="unknown registry slot 'norms'"):
        hooks.fill_registry("{{ registry:norms }}", names)


def test_the_plugin_tutorial_shows_the_example_plugin_as_it_is():
    """The tutorial's file blocks are the plugin's files, so the page cannot drift from the code."""
    shown = {b.directives["file"]: b.text for b in parse(ROOT / "docs/tutorials/plugin.md") if "file" in b.directives}
    assert {"plugins/example/pyproject.toml", "plugins/example/llm_modules_example/dyt.py"} <= set(shown)
    for path, text in shown.items():
        assert (ROOT / path).read_text() == text, f"docs/tutorials/plugin.md shows an outdated {path}"


def test_the_3d_tutorial_shows_the_strategy_presets_as_they_are():
    """Each YAML block headed ``# configs/strategies/NAME.yaml`` on the 3D parallelism page is that
    preset's ``trainer:`` section, so the page cannot drift from the presets."""
    shown = {}
    for block in parse(ROOT / "docs/tutorials/3d-parallelism.md"):
        head, _, body = block.text.partition("\n")
        if block.lang == "yaml" and head.startswith("# configs/strategies/"):
            shown[head[2:].split(":")[0]] = body
    assert set(shown) == {"configs/strategies/pipeline.yaml", "configs/strategies/3d.yaml"}
    for path, body in shown.items():
        text = (ROOT / path).read_text()
        assert body == text[text.index("\ntrainer:") + 1:], f"docs/tutorials/3d-parallelism.md shows an outdated {path}"
