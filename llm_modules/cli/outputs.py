"""What a command may write over: nothing that exists, unless ``--overwrite``; never a foreign folder.

Every command that writes an output (``convert``, ``export``, ``quantize``, ``tokenizer train``,
``generate --output``) checks its output here before it reads or computes anything, so a refusal is
immediate, one line (exit 2) naming the path and the flag, and leaves what is there byte-identical.

- A file output that exists is replaced only with ``--overwrite``.
- A folder output (a Hugging Face model folder) that is not empty is rewritten only with
  ``--overwrite``, and only when it holds nothing but a model folder's files as this library writes
  them (config.json, generation_config.json, *.safetensors, tokenizer files, a README): a folder with
  anything else (a checkpoint, code, data, a subfolder) is refused even with ``--overwrite``.

``data prepare`` has the same rules for its own output folder (``llm_modules.data.prepare.manifest``).
The writes themselves are atomic (``llm_modules.atomic_files``, ``interop.hf_io.write_hf_checkpoint``).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from llm_modules.registry import ConfigError

FLAG = "--overwrite"


def add_flag(parser: argparse.ArgumentParser, what: str = "OUT", folder: str = "") -> None:
    """The ``--overwrite`` option, worded for the command's output ``what``; ``folder`` names when
    the output is a model folder (e.g. "for --format hf"), "always" when it always is."""
    if folder == "always":
        text = f"replace the model files in {what} if it is not empty (never a folder holding anything else)"
    elif folder:
        text = (f"replace {what} if it exists ({folder}: only a folder holding nothing but a model folder's "
                "files)")
    else:
        text = f"replace {what} if it exists"
    parser.add_argument(FLAG, action="store_true", help=text)


def check_file(path: str | os.PathLike, what: str, overwrite: bool) -> Path:
    """Refuse a file output that exists (unless ``overwrite``) or is a folder; returns the path."""
    target = Path(path)
    if target.is_dir():
        raise ConfigError(f"{what} {str(path)!r} is a folder; give a file name (a folder is never replaced)")
    if (target.exists() or target.is_symlink()) and not overwrite:
        raise ConfigError(f"{what} {str(path)!r} already exists; pass {FLAG} to replace it, or choose another path")
    return target


def check_folder(path: str | os.PathLike, what: str, overwrite: bool) -> Path:
    """Refuse a folder output that is a file, holds anything but a model folder's files (even with
    ``overwrite``), or is not empty (unless ``overwrite``); returns the path."""
    from llm_modules.interop.hf_io import foreign_entries

    target = Path(path)
    if target.exists() and not target.is_dir():
        raise ConfigError(f"{what} {str(path)!r} is a file; give a folder (it is created if missing)")
    if not target.is_dir() or not any(os.scandir(target)):
        return target
    foreign = foreign_entries(target)
    if foreign:
        shown = ", ".join(repr(name) for name in foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise ConfigError(
            f"{what} {str(path)!r} is not empty and is not a model folder (it holds {shown}); refusing to write "
            f"into it, even with {FLAG}: choose a new or empty folder"
        )
    if not overwrite:
        raise ConfigError(f"{what} {str(path)!r} already holds a model folder; pass {FLAG} to replace its files, "
                          "or choose another folder")
    return target
