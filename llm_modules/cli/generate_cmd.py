"""``llm-modules generate``: continue prompts with a checkpoint or a Hugging Face folder.

    llm-modules generate MODEL --prompt "def main():" [--max-new-tokens N] [--sample --temperature T ...]
    llm-modules generate MODEL --prompts-file prompts.txt --output generations.jsonl
    llm-modules generate MODEL --prompt-ids "5 17 42"
    llm-modules generate BERT --fill-mask --prompt "x = <mask>(y)" [--top-k 5]

MODEL is an llm-modules checkpoint (float or quantized) or a Hugging Face model folder. One prompt
with greedy or sampled decoding is streamed to the terminal as it is generated; beams and prompt
files print whole results. A prompts file gives one JSON record per prompt, in input order:
``{"prompt", "generation", "tokens"}`` (``tokens``: the new token ids). The output file is written
to a temporary name first, so a failed run leaves an existing file as it was; an existing file is
replaced only with ``--overwrite`` (``cli.outputs``).

A prompt longer than the model's context (``max_seq_len`` tokens) is refused, naming it: nothing
is cut, since which part of a prompt matters (its start or its end) is the user's choice.

The tokenizer is the checkpoint's own, else ``--tokenizer`` (a SentencePiece ``.model`` or a Hugging
Face ``tokenizer.json``), else the Hugging Face folder's ``tokenizer.model`` or ``tokenizer.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from llm_modules.atomic_files import write_text
from llm_modules.cli import outputs
from llm_modules.registry import ConfigError


class _Parser(argparse.ArgumentParser):
    """Usage mistakes (two prompt sources, a bad number) end in one line, like every other error of
    this command, instead of argparse's usage block."""

    def error(self, message: str):
        raise ConfigError(f"{message} (see llm-modules generate --help)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="llm-modules generate",
        description="Generate text from a checkpoint or a Hugging Face folder (greedy, sampling or beam search).",
    )
    parser.add_argument("model", metavar="MODEL", help="a .ckpt written by llm-modules (float or quantized) "
                                                       "or a Hugging Face model folder")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", help="the text to continue (at most the model's max_seq_len tokens: a longer "
                                         "prompt is refused, not cut)")
    source.add_argument("--prompts-file", metavar="FILE",
                        help="one prompt per line, or .jsonl records with a 'prompt' field")
    source.add_argument("--prompt-ids", metavar="IDS", help="token ids to continue, e.g. '5 17 42' (no tokenizer needed)")
    parser.add_argument("--max-new-tokens", type=int, default=None, metavar="N",
                        help="default: the model's generation config's, else 64")
    method = parser.add_mutually_exclusive_group()
    method.add_argument("--greedy", action="store_true",
                        help="take the most likely token (the default, unless the model's generation config samples)")
    method.add_argument("--sample", action="store_true", help="sample instead of taking the most likely token")
    parser.add_argument("--temperature", type=float, default=None, metavar="T", help="with --sample")
    parser.add_argument("--top-k", type=int, default=None, metavar="K",
                        help="with --sample; with --fill-mask: guesses per mask (default 5)")
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
    outputs.add_flag(parser, "the --output file")
    parser.add_argument("--no-stream", action="store_true", help="print the result at the end, not token by token")
    parser.add_argument("--tokenizer", metavar="PATH",
                        help="a SentencePiece .model or a tokenizer.json (default: the checkpoint's, "
                             "or the HF folder's tokenizer.model / tokenizer.json)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None,
                        help="cast the weights (default: as saved)")
    parser.add_argument("--fill-mask", action="store_true",
                        help="MaskedLM (BERT): print the --top-k guesses for each <mask> of the prompt")
    return parser


def load_model(path: str, dtype: str | None = None):
    """The model of a checkpoint file or a Hugging Face folder (an ``InferenceLM``: no Lightning to
    import), in eval mode; a folder's
    generation_config.json goes with it (``generation.defaults``: where generation stops, how it samples).
    ``dtype``: a folder's weights are loaded in it (``from_hf``, which keeps RoPE's tables in fp32);
    a checkpoint is cast afterwards (``place``)."""
    p = Path(path)
    if p.is_dir():
        from llm_modules.generation.defaults import FOLDER_SETTINGS, read_folder_settings
        from llm_modules.hf import from_hf

        module = from_hf(p, dtype=dtype or "auto", trains=False)
        setattr(module, FOLDER_SETTINGS, read_folder_settings(p))
        return module
    if not p.is_file():
        raise ConfigError(f"MODEL {path!r} does not exist; give a .ckpt file or a Hugging Face model folder")
    from llm_modules.checkpoint import load_model as load

    return load(p)


def find_tokenizer(module, model_path: str, explicit: str | None):
    """``--tokenizer``, else the checkpoint's own, else a Hugging Face folder's tokenizer file."""
    from llm_modules.data.hf_tokenizer import folder_tokenizer, load_tokenizer

    if explicit:
        return load_tokenizer(explicit, field="--tokenizer")
    if module.tokenizer is not None:
        return module.tokenizer
    return folder_tokenizer(model_path) if Path(model_path).is_dir() else None


def place(module, device: str, dtype: str | None):
    """The model cast to ``--dtype`` and moved to ``--device``; a bad device is a one-line error."""
    import torch

    if dtype is not None and any(p.is_floating_point() and p.dtype != getattr(torch, dtype)
                                 for p in module.parameters()):
        if getattr(module, "quantization", None):
            raise ConfigError(f"--dtype {dtype}: a quantized checkpoint keeps the number formats it was saved "
                              "with (its layers compute in their input's dtype); drop --dtype")
        module = module.to(getattr(torch, dtype))
    try:
        return module.to(device)
    except (RuntimeError, AssertionError) as err:  # unknown device string, or no CUDA in this build
        raise ConfigError(f"--device {device!r}: {err}") from None


def generation_options(args: argparse.Namespace, model_defaults: dict | None = None) -> dict:
    """The flags as ``generate`` keyword arguments over the model's own decoding defaults
    (``generation.defaults.decoding``: a Hugging Face generation_config.json that samples, say);
    flags left unset are not passed, so an option that needs another (``--temperature`` needs
    ``--sample``) is refused only when given. ``--greedy`` or ``--num-beams`` drop the model's sampling."""
    options = dict(model_defaults or {})
    if args.greedy or args.num_beams > 1:
        for name in ("do_sample", "temperature", "top_k", "top_p"):
            options.pop(name, None)
    options.setdefault("max_new_tokens", 64)
    if args.max_new_tokens is not None:
        options["max_new_tokens"] = args.max_new_tokens
    options["num_beams"] = args.num_beams
    if args.repetition_penalty != 1.0 or "repetition_penalty" not in options:
        options["repetition_penalty"] = args.repetition_penalty
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
    """Prints one row's continuation as its tokens arrive.

    Each step prints the continuation text so far (``continuation_text``: decoded with the prompt's
    last tokens, so a leading space survives) minus what is already printed: pieces that only become
    characters together (UTF-8 bytes, a space and a word) print right. Text ending in an incomplete
    character (U+FFFD) waits for the next token; ``finish`` prints whatever the final text adds.
    """

    def __init__(self, tokenizer, prompt_ids, out=None):
        self.tokenizer, self.prompt_ids, self.out = tokenizer, list(prompt_ids), out
        self.tokens: list[int] = []
        self.printed = ""

    def __call__(self, step_tokens) -> None:
        from llm_modules.generation.prompts import continuation_text

        self.tokens.append(int(step_tokens[0]))
        text = continuation_text(self.tokenizer, self.prompt_ids, self.tokens)
        if not text.endswith("\ufffd"):
            self.show(text)

    def show(self, text: str) -> None:
        if text.startswith(self.printed) and len(text) > len(self.printed):
            out = self.out or sys.stdout
            out.write(text[len(self.printed):])
            out.flush()
            self.printed = text

    def finish(self, text: str) -> None:
        self.show(text)
        (self.out or sys.stdout).write("\n")


def _check_ids(ids: list[int], vocab_size: int, field: str) -> None:
    bad = [i for i in ids if not 0 <= i < vocab_size]
    if bad:
        raise ConfigError(f"{field}: ids {bad[:5]} are outside the model's vocabulary [0, {vocab_size})")


def run(argv: list[str]) -> int:
    from llm_modules.cli import fill_mask
    from llm_modules.kinds import by_class_name
    from llm_modules.generation.prompts import encode_prompt, read_prompts

    args = build_parser().parse_args(argv)
    if args.output and Path(args.output).is_dir():
        raise ConfigError(f"--output {args.output!r} is a folder; give a file name such as generations.jsonl")
    if args.output:
        outputs.check_file(args.output, "--output", args.overwrite)
    elif args.overwrite:
        raise ConfigError("--overwrite is for --output FILE; without --output nothing is written")
    if args.fill_mask:
        fill_mask.check_flags(args)
    prompts = read_prompts(args.prompts_file) if args.prompts_file else None
    module = load_model(args.model, args.dtype)
    known = by_class_name(module.base_kind)
    masked = known is not None and not known.generates
    if masked and not args.fill_mask:
        raise ConfigError("a MaskedLM does not generate left to right; pass --fill-mask and mark the "
                          "tokens to guess with <mask> in the prompt (from Python: lm.fill_mask(input_ids))")
    if args.fill_mask and not masked:
        raise ConfigError(f"--fill-mask needs a MaskedLM (encoder-only); {args.model} is a {module.kind}, "
                          "which continues text: drop --fill-mask")
    module = place(module, args.device, args.dtype)
    tokenizer = find_tokenizer(module, args.model, args.tokenizer)
    if args.prompt_ids is not None:
        try:
            rows = [[int(t) for t in args.prompt_ids.replace(",", " ").split()]]
        except ValueError:
            raise ConfigError(f"--prompt-ids {args.prompt_ids!r}: give integers separated by spaces") from None
        _check_ids(rows[0], module.config.vocab_size, "--prompt-ids")
        texts = [tokenizer.decode(rows[0], skip_special=not masked) if tokenizer is not None else args.prompt_ids]
    else:
        if tokenizer is None:
            raise ConfigError(f"{args.model}: no tokenizer found (the checkpoint holds none, and there is no "
                              "tokenizer.model or tokenizer.json); pass --tokenizer PATH, or token ids with --prompt-ids")
        texts = prompts if prompts is not None else [args.prompt]
        encode = fill_mask.encode_masked if masked else (lambda tok, text: encode_prompt(tok, module, text))
        rows = [encode(tokenizer, t) for t in texts]
        _check_ids([i for r in rows for i in r], module.config.vocab_size, "the tokenizer's ids")
    check_prompt_lengths(module, rows, args.prompts_file)

    if masked:
        masks = fill_mask.fill(module, rows, tokenizer, args.top_k or 5, args.batch_size, args.device)
        records = [{"prompt": text, "masks": found} for text, found in zip(texts, masks)]
        if args.output or prompts is not None:
            return _write_records(records, args.output)
        for record in records:
            print(record["prompt"] + "\n" + fill_mask.format_masks(record["masks"]))
        return 0

    records = _generate(args, module, tokenizer, texts, rows)
    if args.output or prompts is not None:
        return _write_records(records, args.output)
    return 0


def _generate(args, module, tokenizer, texts: list[str], rows: list[list[int]]) -> list[dict]:
    """Generate for every row in batches; stream a single greedy or sampled row to the terminal,
    print whole results otherwise (unless they go to JSONL); one record per row."""
    from llm_modules.generation.defaults import decoding
    from llm_modules.generation.prompts import continuation_text, left_pad, new_tokens, stop_ids

    seq2seq = getattr(module, "kind", None) == "Seq2SeqLM"
    if any(not r for r in rows) and not seq2seq:
        raise ConfigError("a prompt encodes to no tokens; a decoder needs at least one token to continue from")
    options = generation_options(args, decoding(module, tokenizer))
    if tokenizer is not None:
        options["tokenizer"] = tokenizer
    eos_ids = stop_ids(module, tokenizer)
    options["eos_token_id"] = eos_ids
    pad_id = module.config.pad_token_id
    quiet = args.output is not None or args.prompts_file is not None
    stream = not (args.no_stream or quiet) and len(rows) == 1 and args.num_beams == 1 and tokenizer is not None

    records = []
    for start in range(0, len(rows), args.batch_size):
        batch_rows = rows[start:start + args.batch_size]
        ids, mask = left_pad(batch_rows, pad_id)
        streamer = None
        if stream:
            sys.stdout.write(texts[0])
            sys.stdout.flush()
            streamer = TerminalStream(tokenizer, [] if seq2seq else batch_rows[0])
        try:
            out = module.generate(ids.to(args.device), attention_mask=mask.to(args.device), streamer=streamer, **options)
        except ConfigError as err:  # name the flag, not the Python option
            raise ConfigError(str(err).replace("do_sample: true", "--sample")) from None
        for offset, tokens in enumerate(new_tokens(module, out.cpu(), ids.shape[1], eos_ids, pad_id)):
            if tokenizer is not None:
                text = continuation_text(tokenizer, [] if seq2seq else batch_rows[offset], tokens)
            else:
                text = " ".join(map(str, tokens))
            records.append({"prompt": texts[start + offset], "generation": text, "tokens": tokens})
            if streamer is not None:
                streamer.finish(text)
            elif not quiet:
                print(records[-1]["prompt"] + (text if tokenizer is not None else " -> " + text))
    return records


def _write_records(records: list[dict], output: str | None) -> int:
    """JSONL, one record per prompt in input order: to ``output`` atomically, or to stdout."""
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    if output:
        write_text(output, text)
        print(f"wrote {len(records)} record(s) to {output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def check_prompt_lengths(module, rows: list[list[int]], prompts_file: str | None = None) -> None:
    """Refuse a prompt longer than the model's context instead of generating from positions it
    was never trained on (RoPE, ALiBi) or failing half-way (a learned position table). Encoder-
    decoder models are exempt: their encoder's relative positions have no fixed length."""
    limit = module.config.max_seq_len
    if getattr(module, "kind", None) == "Seq2SeqLM" or not limit:
        return
    for number, row in enumerate(rows, start=1):
        if len(row) > limit:
            which = f"prompt {number} of {prompts_file}" if prompts_file else "the prompt"
            raise ConfigError(f"{which} is {len(row)} tokens, longer than the model's context (max_seq_len {limit}); "
                              f"shorten it to at most {limit} tokens (prompts are refused, not cut)")
