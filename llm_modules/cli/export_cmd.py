"""``llm-modules export``: a (fine-tuned) checkpoint -> a Hugging Face folder, a checkpoint, or an adapter file.

    llm-modules export CKPT OUT_DIR                        # --format hf: the method merged, transformers loads it
    llm-modules export CKPT OUT_DIR --overwrite            # replace an earlier export (files of a model folder only)
    llm-modules export CKPT OUT_DIR --dtype bfloat16 --max-shard-size 2GB   # bf16, in 2 GB shards + index
    llm-modules export CKPT OUT.ckpt --format ckpt --merge # a plain checkpoint (another run's init_from)
    llm-modules export CKPT OUT.ckpt --format ckpt         # self-contained: base and method's tensors, no base needed
    llm-modules export CKPT OUT.safetensors --format adapter   # the method's tensors alone (peft.io)

CKPT is any llm-modules checkpoint, adapter-only ones included (their base is read from the
``init_from`` they were trained from, or ``--init-from``). Merging folds a method into the base
weights (LoRA; a full fine-tune has nothing to fold); methods that add computation of their own
(adapters, soft prompts, prefixes) cannot be merged and export as ``ckpt`` or ``adapter``. Outputs
are written to a temporary name and moved into place when complete, so a failed export leaves any
existing file as it was; an existing OUT (a non-empty folder for hf) is replaced only with
``--overwrite`` (``cli.outputs``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from llm_modules.cli import outputs
from llm_modules.registry import ConfigError

FORMATS = ("hf", "ckpt", "adapter")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llm-modules export",
        description="Export a checkpoint (fine-tuned ones included) as a Hugging Face folder, a checkpoint or an "
                    "adapter file.",
    )
    parser.add_argument("ckpt", metavar="CKPT", help="checkpoint written by llm-modules or a Lightning Trainer "
                                                     "(adapter-only fine-tunes included)")
    parser.add_argument("out", metavar="OUT", help="hf: a folder; ckpt: a .ckpt file; adapter: a .safetensors file "
                                                   "(or a folder to hold adapter.safetensors)")
    parser.add_argument("--format", choices=FORMATS, default="hf",
                        help="hf (default): config.json + model.safetensors with the method merged; ckpt: an "
                             "llm-modules checkpoint; adapter: the PEFT method's tensors only")
    parser.add_argument("--merge", action="store_true",
                        help="ckpt: fold the method into the base weights (a plain model); hf always merges")
    parser.add_argument("--family", default=None, metavar="NAME",
                        help="hf: force a Hugging Face model_type (default: the family that represents the model "
                             "exactly)")
    parser.add_argument("--init-from", default=None, metavar="BASE",
                        help="where an adapter-only checkpoint's base is now, if it has moved since training")
    add_hf_file_options(parser)
    outputs.add_flag(parser, folder="for --format hf")
    return parser


def add_hf_file_options(parser: argparse.ArgumentParser) -> None:
    """--dtype and --max-shard-size of the commands that write a Hugging Face folder (export, convert to-hf)."""
    from llm_modules.interop.dtypes import CHOICES
    from llm_modules.interop.shards import DEFAULT_MAX_SHARD_SIZE

    parser.add_argument("--dtype", choices=CHOICES, default=None,
                        help="hf: the dtype of the weights written (default auto: the model's own)")
    parser.add_argument("--max-shard-size", default=None, metavar="SIZE",
                        help="hf: larger weights are written as model-0000i-of-0000N.safetensors shards + "
                             "model.safetensors.index.json; bytes or e.g. 500MB, 2GB "
                             f"(default {DEFAULT_MAX_SHARD_SIZE}, as transformers' save_pretrained)")


def hf_file_options(args: argparse.Namespace) -> dict:
    """The to_hf keywords of those options, checked before anything is loaded."""
    from llm_modules.interop.shards import DEFAULT_MAX_SHARD_SIZE, parse_size

    size = DEFAULT_MAX_SHARD_SIZE if args.max_shard_size is None else args.max_shard_size
    return {"dtype": args.dtype or "auto", "max_shard_size": parse_size(size, "--max-shard-size")}


def export_hf(module, out: str, family: str | None, **options) -> str:
    """The module (its PEFT method merged) as a Hugging Face folder, its tokenizer included (``to_hf``;
    ``options``: its ``dtype`` and ``max_shard_size``), so that transformers and ``llm-modules generate
    OUT`` load it; returns what was written, for the report line. ``llm-modules convert to-hf`` writes
    through here too."""
    from llm_modules.interop import to_hf
    from llm_modules.models.finetuning import fold

    path = to_hf(fold(module), out, family=family, prune=True, **options)  # OUT passed outputs.check_folder
    names = sorted(p.name for p in Path(path).iterdir() if p.is_file() and not p.name.startswith("."))
    return f"{path}/ ({', '.join(names)})"


def export_ckpt(module, out: str, merge: bool) -> str:
    from llm_modules.checkpoint import save_checkpoint
    from llm_modules.models.finetuning import fold, self_contained

    module = fold(module) if merge else self_contained(module)
    return str(save_checkpoint(module, out))


def export_adapter(module, out: str) -> str:
    from llm_modules.peft import save_adapter

    if module.peft_method is None:
        raise ConfigError("--format adapter: the checkpoint has no peft method (every parameter was trained); "
                          "export it with --format hf or --format ckpt")
    return str(save_adapter(out, module.model, module.peft_method, module.config))


def run(argv: list[str]) -> int:
    from llm_modules.checkpoint import load_model

    args = build_parser().parse_args(argv)
    source, target = Path(args.ckpt), Path(args.out)
    if not source.is_file():
        raise ConfigError(f"CKPT {args.ckpt!r} does not exist; give a .ckpt file")
    if target.exists() and source.resolve() == target.resolve():
        raise ConfigError(f"OUT {args.out!r} is CKPT itself; export to another path so the checkpoint stays")
    if args.merge and args.format != "ckpt":
        raise ConfigError("--merge is for --format ckpt (--format hf always merges, --format adapter never does)")
    if args.family and args.format != "hf":
        raise ConfigError("--family is for --format hf")
    for flag, value in (("--dtype", args.dtype), ("--max-shard-size", args.max_shard_size)):
        if value is not None and args.format != "hf":
            raise ConfigError(f"{flag} is for --format hf (a checkpoint keeps the model's dtype, in one file)")
    options = hf_file_options(args)
    check_output(args.out, args.format, args.overwrite)
    module = load_model(source, init_from=args.init_from)
    method = module.peft_method.name if module.peft_method is not None else None
    if args.format == "hf":
        written = export_hf(module, args.out, args.family, **options)
    elif args.format == "ckpt":
        written = export_ckpt(module, args.out, args.merge)
    else:
        written = export_adapter(module, args.out)
    if method is None:
        what = "no peft method"
    else:
        what = f"peft {method}" + (" merged" if args.format == "hf" or args.merge else "")
    print(f"wrote {written} ({module.kind}, {what}) from {args.ckpt}")
    return 0


def check_output(out: str, fmt: str, overwrite: bool) -> None:
    """Refuse OUT before anything is loaded: an existing file or model folder without --overwrite,
    a folder where one file goes, a folder that is not a model folder (``cli.outputs``)."""
    if fmt == "hf":
        outputs.check_folder(out, "OUT", overwrite)
    elif fmt == "ckpt":
        if Path(out).is_dir():
            raise ConfigError(f"OUT {out!r} is a folder; --format ckpt writes one file, e.g. {out.rstrip('/')}/model.ckpt")
        outputs.check_file(out, "OUT", overwrite)
    else:
        from llm_modules.peft.io import adapter_path

        outputs.check_file(adapter_path(out), "OUT", overwrite)
