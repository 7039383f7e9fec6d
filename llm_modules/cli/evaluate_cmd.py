"""``llm-modules evaluate``: benchmark tasks through lm-evaluation-harness, on a checkpoint or a Hugging Face folder.

    llm-modules evaluate MODEL --tasks T1,T2 [--num_fewshot K] [--limit N] [--output results.json] [--overwrite]
                         [--batch_size B] [--device cpu] [--seed S] [--include_path DIR] [--log_samples]
                         [--demonstrations bm25 --order similar-last --cot zeroshot --self_consistency 5 ...]

Prints lm-eval's table and, with ``--output``, writes lm-eval's results JSON (atomically; an existing
file only with ``--overwrite``, refused before any work). The demonstration-design and
chain-of-thought flags are ``evaluation.prompting``'s, applied to every task. The evaluation loop is
``llm_modules.evaluation.runner.evaluate_tasks``; the model is ``LLMModulesLM``. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from llm_modules.cli import outputs
from llm_modules.evaluation import prompting
from llm_modules.registry import ConfigError

DESCRIPTION = """\
Evaluate a model on lm-evaluation-harness tasks and print lm-eval's table.

Tasks are lm-eval task/group names (their data must already be on this machine: nothing is downloaded),
tasks bundled with llm-modules, or paths of local task YAML files (the YAML's 'task:' is the name, and
its folder is searched for the files it includes). Needs the eval extra: pip install 'llm-modules[eval]'.
"""

EPILOG = """\
examples:
  llm-modules evaluate runs/llm/version_0/checkpoints/last.ckpt --tasks my_tasks/arith.yaml --num_fewshot 5
  llm-modules evaluate hf-folder --tasks hellaswag --limit 100 --output results.json
"""


def _count(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def _limit(text: str) -> int | float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    return int(value) if value.is_integer() else value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llm-modules evaluate", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", metavar="MODEL", help="a .ckpt written by llm-modules, or a Hugging Face model folder")
    parser.add_argument("--tasks", required=True, metavar="T1,T2",
                        help="comma-separated task names (lm-eval's or bundled) and/or task YAML file paths")
    parser.add_argument("--num_fewshot", type=_count, default=None, metavar="K",
                        help="demonstrations before each question (default: each task's own, else 0; "
                             "a task that fixes 0 keeps 0)")
    parser.add_argument("--limit", type=_limit, default=None, metavar="N",
                        help="evaluate only the first N documents of each task (a value below 1 is a fraction)")
    parser.add_argument("--output", default=None, metavar="FILE", help="write lm-eval's results JSON here")
    outputs.add_flag(parser, "--output")
    parser.add_argument("--batch_size", type=_count, default=8, metavar="B", help="requests per forward (default 8)")
    parser.add_argument("--device", default="cpu", help="torch device to run on (default cpu; e.g. cuda:0)")
    parser.add_argument("--seed", type=_count, default=1234, metavar="S",
                        help="seed for Python, NumPy, torch and the choice of demonstrations (default 1234)")
    parser.add_argument("--include_path", action="append", default=[], metavar="DIR",
                        help="also search this folder of task YAML files (repeatable)")
    parser.add_argument("--log_samples", action="store_true",
                        help="keep every document's prompt, model output and metrics in the JSON under 'samples'")
    parser.add_argument("--confirm_run_unsafe_code", action="store_true",
                        help="allow tasks that run code the model writes (code synthesis)")
    prompting.add_arguments(parser)  # demonstration design and chain-of-thought (evaluation.prompting)
    return parser


def _check_model(path: str) -> None:
    model = Path(path)
    if not model.exists():
        raise ConfigError(f"MODEL {path!r} does not exist; give a .ckpt file or a Hugging Face model folder")
    if not os.access(model, os.R_OK) or (model.is_dir() and not os.access(model, os.X_OK)):
        raise ConfigError(f"MODEL {path!r} cannot be read (permission denied); check its permissions")
    if model.is_dir() and not (model / "config.json").is_file():
        raise ConfigError(f"MODEL {path!r} is a folder without config.json, not a Hugging Face model folder; "
                          "give a .ckpt file or a model folder")


def _check_device(name: str) -> None:
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(f"--device {name!r} is not a torch device; give e.g. cpu, cuda or cuda:0") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name!r}: no CUDA GPU is available here; use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"--device {name!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s) "
                          f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})")


def load_model(path: str, batch_size: int, device: str):
    """``LLMModulesLM`` over ``path``; what it refuses (an encoder-only model, no tokenizer) is one line."""
    from llm_modules.evaluation.lm_eval_model import LLMModulesLM

    try:
        return LLMModulesLM(pretrained=path, batch_size=batch_size, device=device)
    except ValueError as err:
        raise ConfigError(f"MODEL {path!r}: {err}") from None


def run(argv: list[str]) -> int:
    from llm_modules.evaluation import runner

    args = build_parser().parse_args(argv)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    runner.check_counts(args.num_fewshot, args.limit)
    if args.batch_size < 1:
        raise ConfigError(f"--batch_size {args.batch_size}: give a number of requests >= 1")
    if args.output is not None:
        outputs.check_file(args.output, "--output", args.overwrite)  # before any work
    design = prompting.design_from_args(args)  # a bad demonstration/chain-of-thought flag: one line, before work
    _check_device(args.device)
    runner.require_lm_eval()
    _check_model(args.model)
    with runner.offline():  # a Hugging Face folder's tokenizer must not be fetched either
        lm = load_model(args.model, args.batch_size, args.device)
    results = runner.evaluate_tasks(lm, tasks, num_fewshot=args.num_fewshot, limit=args.limit, seed=args.seed,
                                    include_paths=args.include_path, log_samples=args.log_samples,
                                    confirm_run_unsafe_code=args.confirm_run_unsafe_code, model_name=args.model,
                                    prepare_tasks=prompting.task_preparer(design, lm) if design else None)
    results["config"].update(batch_size=args.batch_size, device=args.device,
                             prompt_design=design.to_dict() if design else None)
    if args.output is not None:
        from llm_modules.atomic_files import write_text

        write_text(args.output, runner.to_json(results))
    print(f"{args.model}: limit {args.limit}, num_fewshot {args.num_fewshot}, batch_size {args.batch_size}, "
          f"seed {args.seed}")
    print(runner.table(results))
    if args.output is not None:
        print(f"wrote {args.output}")
    return 0
