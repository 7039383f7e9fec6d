"""``llm-modules quantize``: a float checkpoint -> a quantized checkpoint for CPU inference.

    llm-modules quantize CKPT OUT --method {dynamic-int8,int8-weight,int4-weight} [--group-size N] [--overwrite]

Prints the file sizes before and after. The output is written to a temporary name first, so a
failed run leaves existing files as they were; OUT may not be CKPT itself, and an existing OUT is
replaced only with ``--overwrite`` (``cli.outputs``).
Load the result with ``llm_modules.quantization.load_quantized``.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from llm_modules.cli import outputs
from llm_modules.registry import ConfigError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llm-modules quantize",
        description="Quantize a checkpoint's linear layers for CPU inference (embeddings and norms stay float32).",
    )
    parser.add_argument("ckpt", metavar="CKPT", help="float checkpoint written by llm-modules or a Lightning Trainer")
    parser.add_argument("out", metavar="OUT", help="quantized checkpoint to write")
    parser.add_argument("--method", required=True, metavar="NAME",
                        help="dynamic-int8 (int8 weights and activations, integer matmul), "
                             "int8-weight or int4-weight (weight-only)")
    parser.add_argument("--group-size", type=int, default=None, metavar="N",
                        help="int4-weight: inputs per scale/offset (default 64; e.g. 32, 64, 128)")
    outputs.add_flag(parser)
    return parser


def _megabytes(size: int) -> str:
    return f"{size / 1e6:.2f} MB"


def _check_paths(ckpt: str, out: str, overwrite: bool) -> None:
    source, target = Path(ckpt), Path(out)
    if not source.is_file():
        raise ConfigError(f"checkpoint {ckpt!r} does not exist; give the path of a .ckpt file")
    if target.is_dir():
        raise ConfigError(f"OUT {out!r} is a folder; give a file name, e.g. {str(target / (source.stem + '-q.ckpt'))!r}")
    same = source.resolve() == target.resolve() or (target.exists() and os.path.samefile(source, target))
    if same:
        raise ConfigError(f"OUT {out!r} is CKPT itself; write the quantized model to another file "
                          "so the float checkpoint stays")
    outputs.check_file(out, "OUT", overwrite)


def run(argv: list[str]) -> int:
    from llm_modules.checkpoint import load_model, save_quantized
    from llm_modules.quantization import build_method, linear_bytes, quantize

    args = build_parser().parse_args(argv)
    options = {} if args.group_size is None else {"group_size": args.group_size}
    method = build_method(args.method, **options)  # a bad name or option fails before any file is read
    _check_paths(args.ckpt, args.out, args.overwrite)
    module = load_model(args.ckpt)  # a quantized file comes back quantized
    if getattr(module, "quantization", None):
        raise ConfigError(f"checkpoint {args.ckpt!r} is already quantized ({module.quantization['method']}); "
                          "quantize the float checkpoint it came from")
    if module.peft_method is not None:  # a fine-tuned checkpoint: quantize what it computes, base + method
        from llm_modules.models.finetuning import fold

        name = module.peft_method.name
        fold(module)
        print(f"merged peft method {name!r} into the weights before quantizing")
    float_tensors = _tensor_bytes(module)
    quantize(module, method)
    path = save_quantized(module, args.out)
    before, after = os.path.getsize(args.ckpt), os.path.getsize(path)
    tensors = _tensor_bytes(module)
    stored, as_float = linear_bytes(module)
    options_text = ", ".join(f"{k} {v}" for k, v in method.options().items())
    print(f"wrote {path} ({module.kind}, {method.name}{', ' + options_text if options_text else ''}; "
          f"{len(module.quantization['layers'])} linear layers quantized)")
    # The input file may also hold optimizer state: the model's tensors are the fair comparison.
    print(f"  file:           {_megabytes(before)} -> {_megabytes(after)}")
    print(f"  model tensors:  {_megabytes(float_tensors)} -> {_megabytes(tensors)} ({tensors / float_tensors:.1%})")
    print(f"  linear weights: {_megabytes(as_float)} -> {_megabytes(stored)} ({stored / max(as_float, 1):.1%})")
    return 0


def _tensor_bytes(module) -> int:
    """Bytes of the module's state_dict tensors, each shared tensor once."""
    seen = {}
    for tensor in module.state_dict().values():
        seen[(tensor.data_ptr(), tensor.nbytes)] = tensor.nbytes
    return sum(seen.values())
