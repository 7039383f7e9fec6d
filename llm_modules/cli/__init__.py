"""Command line entry point ``llm-modules`` (also ``python -m llm_modules``): dispatches to the subcommands.

``fit | validate | test | predict`` are LightningCLI commands (``llm_modules.cli.train``);
``registry``, ``convert``, ``export`` and the others are small argparse commands. Every command's
``run`` returns an exit code; a configuration or file error ends with one line on stderr and exit
code 2, no traceback.
"""

from __future__ import annotations

import contextlib
import difflib
import gc
import importlib
import os
import sys
from collections.abc import Iterator
from typing import Callable

TRAIN_COMMANDS = ("fit", "validate", "test", "predict")
#: commands that load a model or a table, answer and exit: they run without the cycle collector
#: (``without_cycle_collection``); training, data preparation and evaluation run for long, with it
SHORT_COMMANDS = ("generate", "convert", "export", "quantize", "estimate", "registry")

COMMANDS = {
    "fit": "train a model (LightningCLI: --config, --print_config, dotted overrides)",
    "validate": "evaluate a checkpoint on the validation data",
    "test": "evaluate a checkpoint on the test data",
    "predict": "run a checkpoint on the prediction data",
    "generate": "continue prompts with a checkpoint or a Hugging Face folder (streams to the terminal)",
    "registry": "list every registered component: slot, name, one-line doc, providing plugin",
    "convert": "convert between Hugging Face model folders and llm-modules checkpoints",
    "export": "export a (fine-tuned) checkpoint: merged to Hugging Face, a checkpoint, or the adapter alone",
    "tokenizer": "train a SentencePiece tokenizer (tokenizer train PATHS --out FILE)",
    "quantize": "quantize a checkpoint for CPU inference (quantize CKPT OUT --method NAME)",
    "estimate": "plan a run: parameters, FLOPs, memory per device, scaling laws, wall time",
    "data": "clean a corpus: filters, dedup, PII scrubbing, decontamination (data prepare)",
    "evaluate": "benchmark tasks through lm-evaluation-harness (evaluate MODEL --tasks T1,T2 [--num_fewshot K])",
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [
        "usage: llm-modules <command> [options]",
        "",
        "A registry-driven Lightning trainer for transformer language models.",
        "",
        "commands:",
        *(f"  {name:<{width}}  {text}" for name, text in COMMANDS.items()),
        "",
        "Run 'llm-modules <command> --help' for the options of a command.",
    ]
    return "\n".join(lines)


def fail(command: str, message: object) -> int:
    """Report an error as one line on stderr; return the exit code for usage/config errors."""
    text = " ".join(line.strip() for line in str(message).splitlines() if line.strip())
    prog = f"llm-modules {command}" if command else "llm-modules"
    print(f"{prog}: error: {text}", file=sys.stderr)
    return 2


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush does not fail on the closed pipe."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # stdout replaced (tests) or already closed
        pass


def _train_runner(command: str) -> Callable[[list[str]], int] | None:
    try:
        module = importlib.import_module("llm_modules.cli.train")
    except ModuleNotFoundError as err:
        if err.name != "llm_modules.cli.train":
            raise
        return None
    return module.run


@contextlib.contextmanager
def without_cycle_collection() -> Iterator[None]:
    """Python's cycle collector off while a short command runs, and as it was after. Such a command
    makes few reference cycles, but it imports torch (and some, torch._dynamo), and every full
    collection during those imports walks each object loaded so far: 0.25 to 0.5 s of CPU of
    ``estimate --preset llama-7b`` (about 3.2 s with it, 2.9 s without; peak memory +10 MB).
    Reference counting still frees everything else at once; only cycles wait for the process's end."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _dispatch(command: str, rest: list[str]) -> int:
    if command in SHORT_COMMANDS:
        with without_cycle_collection():
            return _dispatch_command(command, rest)
    return _dispatch_command(command, rest)


def _dispatch_command(command: str, rest: list[str]) -> int:
    if command in TRAIN_COMMANDS:
        run = _train_runner(command)
        if run is None:
            return fail(command, "the training commands are not part of this installation yet "
                                 "(llm_modules/cli/train.py is missing)")
        return run([command, *rest])  # LightningCLI expects the subcommand first
    if command == "registry":
        from llm_modules.cli.registry_cmd import run
    elif command == "tokenizer":
        from llm_modules.cli.tokenizer_cmd import run
    elif command == "generate":
        from llm_modules.cli.generate_cmd import run
    elif command == "quantize":
        from llm_modules.cli.quantize_cmd import run
    elif command == "export":
        from llm_modules.cli.export_cmd import run
    elif command == "estimate":
        from llm_modules.cli.estimate_cmd import run
    elif command == "data":
        from llm_modules.cli.data_cmd import run
    elif command == "evaluate":
        from llm_modules.cli.evaluate_cmd import run
    else:
        from llm_modules.cli.convert_cmd import run
    return run(rest)


def main(argv: list[str] | None = None) -> int:
    """Run ``llm-modules`` with ``argv`` (default: the process arguments) and return its exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        print(usage(), file=sys.stderr)
        return 2
    command, rest = argv[0], argv[1:]
    if command in ("-h", "--help", "help"):
        print(usage())
        return 0
    if command == "--version":
        from llm_modules.version import __version__

        print(f"llm-modules {__version__}")
        return 0
    if command not in COMMANDS:
        close = difflib.get_close_matches(command, COMMANDS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return fail("", f"unknown command {command!r}{hint}; commands: {', '.join(COMMANDS)}")

    from llm_modules.registry import ConfigError

    try:
        return _dispatch(command, rest)
    except ConfigError as err:
        return fail(command, err)
    except BrokenPipeError:  # the reader went away (``| head``): not an error of this command
        _silence_stdout()
        return 0
    except OSError as err:  # missing or unreadable files named on the command line
        where = f"{err.filename}: " if getattr(err, "filename", None) else ""
        return fail(command, f"{where}{err.strerror or err}")
    except SystemExit as exit_:  # argparse / LightningCLI: --help, bad flags; a stop on a signal
        if _is_sigterm_exit(exit_):
            return _stopped_by_signal(command, exit_)
        if isinstance(exit_.__context__, KeyboardInterrupt):  # Lightning's Ctrl+C outside training: sys.exit(1)
            print(f"llm-modules {command}: interrupted", file=sys.stderr)
            return 130
        code = exit_.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    except KeyboardInterrupt:
        print(f"llm-modules {command}: interrupted", file=sys.stderr)
        return 130


def _is_sigterm_exit(exit_: SystemExit) -> bool:
    """Lightning's ``SIGTERMException`` (or our ``Preempted``), without importing Lightning to ask."""
    module = sys.modules.get("lightning.pytorch.utilities.exceptions")
    return module is not None and isinstance(exit_, module.SIGTERMException)


def _stopped_by_signal(command: str, exit_: SystemExit) -> int:
    """A run stopped by a signal fails (128 + the signal: 143 for SIGTERM, 130 for SIGINT), so a scheduler
    sees it; ``fit`` has saved a checkpoint first (``training.preemption``) and says where, in one line.
    Lightning's own ``SIGTERMException`` (validate/test/predict) carries no code: it was SIGTERM."""
    report = getattr(exit_, "report", None)
    if report is None:
        report = "stopped by SIGTERM"
    if report:  # empty on DDP ranks other than 0
        print(f"llm-modules {command}: {report}", file=sys.stderr)
    code = exit_.code
    return code if isinstance(code, int) and code > 128 else 143
