"""``llm-modules convert``: Hugging Face model folders <-> llm-modules (Lightning) checkpoints.

    llm-modules convert from-hf HF_DIR OUT.ckpt [--dtype auto|float32|bfloat16|float16] [--overwrite]
    llm-modules convert to-hf CKPT OUT_DIR [--family NAME] [--dtype ...] [--max-shard-size 2GB] [--overwrite]

Weights are read through safetensors or ``torch.load(weights_only=True)``; outputs are written
to a temporary name first, so a failed conversion leaves existing files as they were. An existing
OUT.ckpt or a non-empty OUT_DIR is replaced only with ``--overwrite`` (``cli.outputs``). ``to-hf``
writes what ``llm-modules export`` writes: the checkpoint's tokenizer included.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from llm_modules.cli import outputs
from llm_modules.cli.export_cmd import add_hf_file_options, hf_file_options
from llm_modules.registry import ConfigError


def build_parser() -> argparse.ArgumentParser:
    from llm_modules.interop.dtypes import CHOICES

    parser = argparse.ArgumentParser(
        prog="llm-modules convert",
        description="Convert between Hugging Face model folders and llm-modules checkpoints.",
    )
    directions = parser.add_subparsers(dest="direction", metavar="{from-hf,to-hf}", required=True)
    source = directions.add_parser(
        "from-hf", help="HF folder (config.json + weights) -> .ckpt",
        description="Load a Hugging Face model folder (any supported model_type: llama, mistral, qwen2, gemma2, "
                    "phi3, gpt2, t5, ...; see the Hugging Face interop docs) and save it as a checkpoint.",
    )
    source.add_argument("hf_dir", metavar="HF_DIR", help="folder with config.json and *.safetensors or pytorch_model.bin")
    source.add_argument("out", metavar="OUT.ckpt", help="checkpoint file to write")
    source.add_argument("--dtype", choices=CHOICES, default="auto",
                        help="the dtype of the weights in OUT.ckpt (default auto: as stored in HF_DIR)")
    outputs.add_flag(source, "OUT.ckpt")
    target = directions.add_parser(
        "to-hf", help=".ckpt -> HF folder (config.json + model.safetensors + the tokenizer)",
        description="Export a checkpoint as config.json + model.safetensors that transformers' Auto classes load, "
                    "with the checkpoint's tokenizer (tokenizer.model + tokenizer_config.json) for AutoTokenizer.",
    )
    target.add_argument("ckpt", metavar="CKPT", help="checkpoint written by llm-modules or a Lightning Trainer")
    target.add_argument("out_dir", metavar="OUT_DIR", help="folder to write (created if missing)")
    target.add_argument("--family", default=None, metavar="NAME",
                        help="force a Hugging Face model_type (llama, gpt2, bloom, t5, bert); "
                             "default: the family that represents the model exactly")
    add_hf_file_options(target)
    outputs.add_flag(target, "OUT_DIR", folder="always")
    return parser


def from_hf_command(hf_dir: str, out: str, overwrite: bool = False, dtype: str = "auto") -> int:
    from llm_modules.hf import from_hf
    from llm_modules.checkpoint import save_checkpoint

    if not Path(hf_dir).is_dir():
        raise ConfigError(f"HF_DIR {hf_dir!r} is not a folder; give a Hugging Face model folder with config.json")
    outputs.check_file(out, "OUT.ckpt", overwrite)
    module = from_hf(hf_dir, dtype=dtype, trains=False)
    path = save_checkpoint(module, out)
    print(f"wrote {path} ({module.kind}, {module.num_parameters():,} parameters) from {hf_dir}")
    return 0


def to_hf_command(ckpt: str, out_dir: str, family: str | None, overwrite: bool = False, **options) -> int:
    from llm_modules.checkpoint import load_model
    from llm_modules.cli.export_cmd import export_hf

    if not Path(ckpt).is_file():
        raise ConfigError(f"checkpoint {ckpt!r} does not exist; give the path of a .ckpt file")
    outputs.check_folder(out_dir, "OUT_DIR", overwrite)
    module = load_model(ckpt)  # a LoRA fine-tune exports merged (llm-modules export has the options)
    print(f"wrote {export_hf(module, out_dir, family, **options)} ({module.kind}) from {ckpt}")
    return 0


def run(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.direction == "from-hf":
        return from_hf_command(args.hf_dir, args.out, args.overwrite, args.dtype)
    return to_hf_command(args.ckpt, args.out_dir, args.family, args.overwrite, **hf_file_options(args))
