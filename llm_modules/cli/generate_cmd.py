"""``llm-modules generate``: continue prompts with a checkpoint or a Hugging Face folder.

    llm-modules generate MODEL --prompt "def main():" [--max-new-tokens N] [--sample --temperature T ...]
    llm-modules generate MODEL --prompts-file prompts.txt --output generations.jsonl
    llm-modules generate MODEL --prompt-ids "5 17 42"

MODEL is an llm-modules checkpoint (float or quantized) or a Hugging Face model folder. One prompt
with greedy or sampled decoding is streamed to the terminal as it is generated; beams and prompt
files print whole results. A prompts file gives one JSON record per prompt, in input order:
``{"prompt", "generation", "tokens"}`` (``tokens``: the new token ids). The output file is written
to a temporary name first, so a failed run leaves an existing file as it was.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from llm_modules.registry import ConfigError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llm-modules generate",
        description="Generate text from a checkpoint or a Hugging Face folder (greedy, sampling or beam search).",
    )
    parser.add_argument("model", metavar="MODEL", help="a .ckpt written by llm-modules (float or quantized) "
                                                       "or a Hugging Face model folder")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", help="the text to continue")
    source.add_argument("--prompts-file", metavar="FILE",
                        help="one prompt per line, or .jsonl records with a 'prompt' field")
    source.add_argument("--prompt-ids", metavar="IDS", help="token ids to continue, e.g. '5 17 42' (no tokenizer needed)")
    parser.add_argument("--max-new-tokens", type=int, default=64, metavar="N")
    parser.add_argument("--sample", action="store_true", help="sample instead of taking the most likely token")
    parser.add_argument("--temperature", type=float, default=None, metavar="T", help="with --sample")
    parser.add_argument("--top-k", type=int, default=None, metavar="K", help="with --sample")
    parser.add_argument("--top-p", type=float, default=None, metavar="P", help="with --sample")
    parser.add_argument("--seed", type=int, default=None, help="makes --sample reproducible")
    parser.add_argument("--num-beams", type=int, default=1, metavar="N", help="beam search with N beams")
    parser.add_argument("--length-penalty", type=float, default=None, metavar="X", help="with --num-beams > 1")
    parser.add_argument("--early-stopping", action="store_true", help="with --num-beams > 1")
    parser.add_argument("--repetition-penalty", type=float, default=1.0, metavar="R")
    parser.add_argument("--stop", action="append", default=None, metavar="STR",
                        help="stop a row once its generated text contains STR (repeatable)")
    parser.add_argument("--batch-size", type=int, default=8, metavar="B", help="prompts per batch (prompts file)")
    parser.add_argument("--output", metavar="FILE", help="write JSONL here instead of printing")
    parser.add_argument("--no-stream", action="store_true", help="print the result at the end, not token by token")
    parser.add_argument("--tokenizer", metavar="PATH",
                        help="a SentencePiece .model (default: the checkpoint's, or the HF folder's tokenizer.model)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    return parser


def load_model(path: str):
    """A LanguageModel from a checkpoint file or a Hugging Face folder, in eval mode."""
    p = Path(path)
    if p.is_dir():
        from llm_modules.interop import from_hf

        return from_hf(p)
    if not p.is_file():
        raise ConfigError(f"MODEL {path!r} does not exist; give a .ckpt file or a Hugging Face model folder")
    from llm_modules.checkpoint import load_checkpoint

    return load_checkpoint(p)


def find_tokenizer(module, model_path: str, explicit: str | None):
    """``--tokenizer``, else the checkpoint's own, else a Hugging Face folder's ``tokenizer.model``."""
    from llm_modules.data.tokenizer import Tokenizer

    if explicit:
        return Tokenizer.load(explicit, field="--tokenizer")
    if module.tokenizer is not None:
        return module.tokenizer
    candidate = Path(model_path) / "tokenizer.model"
    if Path(model_path).is_dir() and candidate.is_file():
        return Tokenizer.load(candidate)
    return None


def encode(tokenizer, module, text: str) -> list[int]:
    """Prompt ids as the model saw text in training: with BOS only when the model has one (imported
    models such as LLaMA); llm-modules' own training data has none."""
    bos = module.config.bos_token_id is not None and tokenizer.bos_id >= 0
    return tokenizer.encode(text, bos=bos)


def generation_options(args: argparse.Namespace) -> dict:
    """The flags as ``generate`` keyword arguments; flags left unset are not passed, so an option
    that needs another (``--temperature`` needs ``--sample``) is refused only when given."""
    options = {"max_new_tokens": args.max_new_tokens, "num_beams": args.num_beams,
               "repetition_penalty": args.repetition_penalty}
    if args.sample:
        options["do_sample"] = True
    for name in ("temperature", "top_k", "top_p", "seed", "length_penalty"):
        if getattr(args, name) is not None:
            options[name] = getattr(args, name)
    if args.early_stopping:
        options["early_stopping"] = True
    if args.stop:
        options["stop_strings"] = args.stop
    return options


class TerminalStream:
    """Prints a single row's text as tokens arrive: the decoded text so far minus what was already
    printed, so pieces that only become characters together (bytes, leading spaces) print right."""

    def __init__(self, tokenizer, out=sys.stdout):
        self.tokenizer, self.out = tokenizer, out
        self.tokens: list[int] = []
        self.printed = ""

    def __call__(self, step_tokens) -> None:
        self.tokens.append(int(step_tokens[0]))
        text = self.tokenizer.decode(self.tokens)
        if text.startswith(self.printed) and len(text) > len(self.printed):
            self.out.write(text[len(self.printed):])
            self.out.flush()
            self.printed = text


def _check_ids(ids: list[int], vocab_size: int, field: str) -> None:
    bad = [i for i in ids if not 0 <= i < vocab_size]
    if bad:
        raise ConfigError(f"{field}: ids {bad[:5]} are outside the model's vocabulary [0, {vocab_size})")


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def run(argv: list[str]) -> int:
    from llm_modules import MaskedLM
    from llm_modules.generation.prompts import left_pad, new_tokens, read_prompts

    args = build_parser().parse_args(argv)
    if args.output and Path(args.output).is_dir():
        raise ConfigError(f"--output {args.output!r} is a folder; give a file name such as generations.jsonl")
    prompts = read_prompts(args.prompts_file) if args.prompts_file else None
    module = load_model(args.model)
    if isinstance(module, MaskedLM):
        raise ConfigError("a MaskedLM does not generate left to right; fill masks from Python with "
                          "lm.fill_mask(input_ids) (see the 'generate, evaluate and quantize' tutorial)")
    module = module.to(args.device)
    tokenizer = find_tokenizer(module, args.model, args.tokenizer)
    vocab = module.config.vocab_size
    if args.prompt_ids is not None:
        try:
            rows = [[int(t) for t in args.prompt_ids.replace(",", " ").split()]]
        except ValueError:
            raise ConfigError(f"--prompt-ids {args.prompt_ids!r}: give integers separated by spaces") from None
        _check_ids(rows[0], vocab, "--prompt-ids")
        texts = [tokenizer.decode(rows[0]) if tokenizer is not None else args.prompt_ids]
    else:
        if tokenizer is None:
            raise ConfigError(f"{args.model}: no tokenizer found (the checkpoint holds none and there is no "
                              "tokenizer.model); pass --tokenizer PATH.model, or token ids with --prompt-ids")
        texts = prompts if prompts is not None else [args.prompt]
        rows = [encode(tokenizer, module, t) for t in texts]
        _check_ids([i for r in rows for i in r], vocab, "the tokenizer's ids")
    if any(not r for r in rows) and not _is_seq2seq(module):
        raise ConfigError("a prompt encodes to no tokens; a decoder needs at least one token to continue from")
    options = generation_options(args)
    if tokenizer is not None:
        options["tokenizer"] = tokenizer
    eos_ids = _eos_ids(module, tokenizer)
    pad_id = module.config.pad_token_id
    stream = (not args.no_stream and args.output is None and prompts is None and args.num_beams == 1
              and tokenizer is not None)

    records = []
    for start in range(0, len(rows), args.batch_size):
        batch_rows = rows[start : start + args.batch_size]
        ids, mask = left_pad(batch_rows, pad_id)
        ids, mask = ids.to(args.device), mask.to(args.device)
        streamer = None
        if stream:
            sys.stdout.write(texts[0])
            sys.stdout.flush()
            streamer = TerminalStream(tokenizer)
        try:
            out = module.generate(ids, attention_mask=mask, streamer=streamer, **options)
        except ConfigError as err:  # name the flag, not the Python option
            raise ConfigError(str(err).replace("do_sample: true", "--sample")) from None
        for offset, tokens in enumerate(new_tokens(module, out.cpu(), ids.shape[1], eos_ids, pad_id)):
            text = tokenizer.decode(tokens) if tokenizer is not None else " ".join(map(str, tokens))
            records.append({"prompt": texts[start + offset], "generation": text, "tokens": tokens})
        if stream:
            sys.stdout.write("\n")

    if args.output:
        _write_atomically(Path(args.output), "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        print(f"wrote {len(records)} generation(s) to {args.output}", file=sys.stderr)
    elif prompts is not None:
        for record in records:
            print(json.dumps(record, ensure_ascii=False))
    elif not stream:
        for record in records:
            print(record["prompt"] + (record["generation"] if tokenizer is not None else " -> " + record["generation"]))
    return 0


def _is_seq2seq(module) -> bool:
    from llm_modules import Seq2SeqLM

    return isinstance(module, Seq2SeqLM)


def _eos_ids(module, tokenizer) -> set[int]:
    """The ids that end a row, as generate chooses them by default."""
    if module.config.eos_token_id is not None:
        return {module.config.eos_token_id}
    if tokenizer is not None and tokenizer.eos_id >= 0:
        return {tokenizer.eos_id}
    return set()
