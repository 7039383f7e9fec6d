"""mkdocs hooks: the CLI reference page, generated from the commands' own ``--help`` at build time,
and the registry's names printed live into any page that asks for them.

Registry placeholders: ``{{ registry:SLOT }}`` becomes the built-in names of that slot, comma
separated (for code and output blocks); ``{{ registry:SLOT:code }}`` the same names each in backticks
(for prose and tables). A page that lists the names of a slot says so with a placeholder instead
of a list, so a new component appears on every such page by being registered. An unknown slot
fails the build.

``mkdocs.yml`` names this file under ``hooks:``. ``on_files`` adds ``reference/cli.md`` to the
site as a generated file, so the page always matches the installed CLI and nothing is written
into the source tree. The commands run in one subprocess of the interpreter that runs mkdocs (so the docs build needs the package installed: ``pip install -e '.[docs]'``), with a
fixed terminal width so the text wraps the same on every machine. A command that fails fails the
build.
"""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys

PAGE = "reference/cli.md"

#: (arguments, what the section says, shown folded)
COMMANDS: list[tuple[list[str], str, bool]] = [
    (["--help"], "The entry point: one subcommand per task.", False),
    (["fit", "--help"], (
        "LightningCLI: `--config`, `--print_config`, dotted overrides of every `trainer`, `model` and "
        "`data` argument. `validate`, `test` and `predict` take the same `trainer`, `model` and `data` "
        "options. The full text is long; it is folded below. `--model.help CausalLM` and `--data.help "
        "TextDataModule` list the model's and the data module's own arguments (next sections)."
    ), True),
    (["fit", "--model.help", "CausalLM"], (
        "The arguments of an LM kind (here `CausalLM`; the other kinds take the same): `config` is a "
        "[ModelConfig](../concepts/configs-and-presets.md), `optim` an `OptimConfig`."
    ), True),
    (["fit", "--data.help", "llm_modules.data.TextDataModule"], (
        "The arguments of the text data module (`--data.NAME` or `--data.init_args.NAME` on the "
        "command line, `data.init_args` in YAML)."
    ), True),
    (["registry", "--help"], (
        "List the registered components of every slot (see [The registry](../concepts/registry.md))."
    ), False),
    (["convert", "--help"], "Hugging Face model folders to and from llm-modules checkpoints.", False),
    (["convert", "from-hf", "--help"], "", False),
    (["convert", "to-hf", "--help"], "", False),
    (["export", "--help"], (
        "Export a checkpoint, fine-tuned ones included: merged into a Hugging Face folder, as a checkpoint, or "
        "the PEFT method's tensors alone (see [Fine-tune with LoRA and friends](../tutorials/finetune.md))."
    ), False),
    (["generate", "--help"], (
        "Continue prompts with a checkpoint or a Hugging Face folder (see [Generate, evaluate and "
        "quantize](../tutorials/generate-evaluate-quantize.md))."
    ), False),
    (["quantize", "--help"], "Quantize a checkpoint for CPU inference.", False),
    (["estimate", "--help"], (
        "Plan a run: parameters, FLOPs, memory per device, scaling laws and wall time (see [Plan a "
        "run](../tutorials/plan-a-run.md))."
    ), False),
    (["data", "prepare", "--help"], (
        "Clean a corpus: filters, deduplication, PII scrubbing and decontamination (see [Prepare "
        "data](../tutorials/prepare-data.md))."
    ), False),
    (["tokenizer", "train", "--help"], (
        "Train a SentencePiece tokenizer from files, folders, globs, JSONL or `python-stdlib`."
    ), False),
]


# One interpreter runs every command in turn (torch and Lightning are imported once), with
# ``llm-modules`` as the program name that usage lines show.
_RUNNER = """
import contextlib, io, json, sys
sys.argv[0] = "llm-modules"
from llm_modules.cli import main
outputs = []
for args in json.loads(sys.argv[1]):
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = main(args)
    if code != 0:
        sys.exit(f"llm-modules {' '.join(args)} exited with {code}")
    outputs.append(buffer.getvalue())
json.dump(outputs, sys.stdout)
"""


def help_texts(commands: list[list[str]]) -> list[str]:
    """The stdout of ``llm-modules ARGS`` for each argument list, in order."""
    env = {**os.environ, "COLUMNS": "100", "OMP_NUM_THREADS": "1", "NO_COLOR": "1", "TERM": "dumb"}
    result = subprocess.run([sys.executable, "-c", _RUNNER, json.dumps(commands)], capture_output=True,
                            text=True, env=env, timeout=600, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"generating the CLI reference failed:\n{result.stderr}")
    return [text.rstrip() + "\n" for text in json.loads(result.stdout)]


def render() -> str:
    outputs = help_texts([args for args, _, _ in COMMANDS])
    lines = [
        "# CLI reference",
        "",
        ("Generated when the site is built, from the `--help` output of the installed `llm-modules` "
         "(`scripts/docs_hooks.py`); run the same commands in a terminal to see the options of your version."),
        "",
    ]
    for (args, about, folded), text in zip(COMMANDS, outputs):
        shown = "llm-modules " + " ".join(args)
        level = "##" if len(args) <= 2 or args[0] != "convert" else "###"
        lines += [f"{level} `{shown}`", ""]
        if about:
            lines += [about, ""]
        if folded:
            lines += [f'??? note "{shown}"', "", "    ```text"]
            lines += [f"    {line}".rstrip() for line in text.splitlines()]
            lines += ["    ```", ""]
        else:
            lines += ["```text", text.rstrip(), "```", ""]
    return "\n".join(lines)


PLACEHOLDER = re.compile(r"\{\{\s*registry:([a-z_]+)(:code)?\s*\}\}")

_CATALOGUE = """
import json, sys
from llm_modules.cli.registry_cmd import catalogue
json.dump(catalogue(), sys.stdout)
"""


@functools.lru_cache(maxsize=1)
def builtin_names() -> dict[str, list[str]]:
    """{slot: names} of the components llm-modules itself registers (installed plugins are left out,
    so the site does not depend on what the machine that builds it has installed)."""
    result = subprocess.run([sys.executable, "-c", _CATALOGUE], capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"reading the registry for the docs failed:\n{result.stderr}")
    return {slot: [e["name"] for e in entries if e["provider"] == "llm_modules"]
            for slot, entries in json.loads(result.stdout).items()}


def fill_registry(markdown: str, names: dict[str, list[str]], where: str = "page") -> str:
    """``markdown`` with every registry placeholder replaced by the names of its slot."""

    def names_of(match: re.Match) -> str:
        slot, code = match.group(1), match.group(2)
        if slot not in names:
            raise RuntimeError(f"{where}: unknown registry slot {slot!r} in {match.group(0)!r}; slots: "
                               f"{', '.join(sorted(names))}")
        return ", ".join(f"`{n}`" if code else n for n in names[slot])

    return PLACEHOLDER.sub(names_of, markdown)


def on_page_markdown(markdown, page, config, files, **kwargs):
    if PLACEHOLDER.search(markdown) is None:
        return markdown
    return fill_registry(markdown, builtin_names(), page.file.src_path)


def on_files(files, config, **kwargs):
    from mkdocs.structure.files import File

    existing = files.get_file_from_path(PAGE)
    if existing is not None:  # a hand-written page of the same name would be silently replaced
        raise RuntimeError(f"docs/{PAGE} exists; it is generated by scripts/docs_hooks.py, delete it")
    files.append(File.generated(config, PAGE, content=render()))
    return files
