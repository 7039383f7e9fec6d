"""``llm-modules tokenizer train``: a SentencePiece tokenizer from files, folders, globs or python-stdlib.

An existing ``--out`` file is replaced only with ``--overwrite``; the file is written atomically.
"""

from __future__ import annotations

import argparse

from llm_modules.cli import outputs
from llm_modules.data.sources import iter_parts, resolve_paths
from llm_modules.data.text_reading import document_lines
from llm_modules.data.tokenizer import Tokenizer


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="llm-modules tokenizer", description=__doc__)
    sub = p.add_subparsers(dest="action", required=True)
    train = sub.add_parser("train", help="train a SentencePiece BPE or unigram tokenizer")
    train.add_argument("paths", nargs="+", help="files, folders, globs, .jsonl files or 'python-stdlib'")
    train.add_argument("--out", required=True, help="where to write the .model file")
    train.add_argument("--vocab-size", type=int, default=8192)
    train.add_argument("--model-type", choices=("bpe", "unigram"), default="bpe")
    train.add_argument("--num-sentinels", type=int, default=100, help="<extra_id_N> tokens for span corruption")
    train.add_argument("--max-sentences", type=int, default=100_000, help="lines sampled for training")
    train.add_argument("--no-split-digits", action="store_true", help="keep digit runs together")
    train.add_argument("--no-byte-fallback", action="store_true", help="map unknown characters to <unk>")
    train.add_argument("--text-field", default="text", help="the JSONL key that holds the text")
    train.add_argument("--seed", type=int, default=0)
    outputs.add_flag(train, "the --out file")
    return p


def run(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    files = resolve_paths(args.paths, text_field=args.text_field, field="paths")
    out = args.out if args.out.endswith(".model") else f"{args.out}.model"  # as Tokenizer.train names it
    outputs.check_file(out, "--out", args.overwrite)
    tokenizer = Tokenizer.train(
        # lines, read in parts: a file that is one huge line trains in bounded memory, as fit's tokenizer does
        (line for _, parts in iter_parts(files) for line in document_lines(parts)),
        args.out,
        vocab_size=args.vocab_size,
        model_type=args.model_type,
        num_sentinels=args.num_sentinels,
        max_sentences=args.max_sentences,
        split_digits=not args.no_split_digits,
        byte_fallback=not args.no_byte_fallback,
        seed=args.seed,
        field="--vocab-size",
        inputs_field="paths",
    )
    print(f"wrote {out} ({tokenizer.vocab_size} pieces, trained on {len(files)} files)")
    return 0
