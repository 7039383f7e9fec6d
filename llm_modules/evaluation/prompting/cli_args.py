"""The command-line surface of ``PromptDesign``: ``add_arguments(parser)`` and ``design_from_args(args)``.

Flags take strings and are checked by ``PromptDesign`` itself (no argparse ``choices``/``type``), so
that a bad value is the design's one-line error naming the field and the closest valid value, not
argparse's usage block.
"""

from __future__ import annotations

import argparse

from llm_modules.evaluation.prompting.design import (
    COT_MODES,
    DEFAULT_MMR_LAMBDA,
    DEFAULT_RATIONALE_TEMPLATE,
    DEFAULT_TEMPERATURE,
    DEFAULT_TRIGGER,
    DEMONSTRATIONS,
    ORDERS,
    SIMILARITIES,
    PromptDesign,
)
from llm_modules.registry import ConfigError

#: flag (without --) -> PromptDesign field, and how its string becomes the field's value
_FLAGS = {
    "demonstrations": ("demonstrations", str),
    "similarity": ("similarity", str),
    "order": ("order", str),
    "mmr_lambda": ("mmr_lambda", float),
    "demo_seed": ("seed", int),
    "demo_template": ("demo_template", str),
    "question_template": ("question_template", str),
    "demo_separator": ("separator", str),
    "cot": ("cot", str),
    "rationale_field": ("rationale_field", str),
    "rationale_template": ("rationale_template", str),
    "cot_trigger": ("cot_trigger", str),
    "answer_pattern": ("answer_pattern", str),
    "self_consistency": ("self_consistency", int),
    "temperature": ("temperature", float),
}

_HELP = {
    "demonstrations": f"how the k demonstrations of each document are chosen: {', '.join(DEMONSTRATIONS)} "
                      "(default: the task's own lm-eval sampler)",
    "similarity": f"what mmr and the similar-last order measure with: {', '.join(SIMILARITIES)} (default bm25)",
    "order": f"demonstration order: {', '.join(ORDERS)} (default: similar-last for bm25/embedding/mmr)",
    "mmr_lambda": f"mmr trade-off, 1 = relevance only, 0 = diversity only (default {DEFAULT_MMR_LAMBDA})",
    "demo_seed": "seed of random selection and random order (default 1234)",
    "demo_template": "jinja template of one demonstration, e.g. 'Q: {{question}}\\nA: {{target}}'; "
                     "variables: the document's fields, text, target, rationale",
    "question_template": "jinja template of the evaluated question (default: --demo_template up to its last placeholder)",
    "demo_separator": "text between demonstrations and before the question (default: the task's fewshot_delimiter)",
    "cot": f"chain-of-thought: {', '.join(COT_MODES)}",
    "rationale_field": "document field holding a demonstration's rationale (--cot fewshot; default rationale)",
    "rationale_template": f"a few-shot chain-of-thought answer (default {DEFAULT_RATIONALE_TEMPLATE!r})",
    "cot_trigger": f"zero-shot chain-of-thought trigger after the question (default {DEFAULT_TRIGGER!r})",
    "answer_pattern": "regex whose last match in a generation is the answer scored (default with --cot: "
                      "'The answer is X')",
    "self_consistency": "sample k generations and score their majority answer (default 1: off)",
    "temperature": f"sampling temperature of --self_consistency (default {DEFAULT_TEMPERATURE})",
}


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the demonstration-design and chain-of-thought flags (all default to unset) to ``parser``."""
    group = parser.add_argument_group("demonstrations and chain-of-thought")
    for flag in _FLAGS:
        group.add_argument(f"--{flag}", dest=f"prompt_{flag}", default=None, metavar=flag.upper(), help=_HELP[flag])
    return parser


def design_from_args(args: argparse.Namespace) -> PromptDesign | None:
    """The ``PromptDesign`` the flags describe, or None when none was given (the tasks stay as they are)."""
    values = {}
    for flag, (field, convert) in _FLAGS.items():
        raw = getattr(args, f"prompt_{flag}", None)
        if raw is None:
            continue
        if convert is str:
            values[field] = _unescape(raw) if field in ("demo_template", "question_template", "separator",
                                                       "rationale_template", "cot_trigger") else raw
            continue
        try:
            values[field] = convert(raw)
        except ValueError:
            raise ConfigError(f"{field}: --{flag} {raw!r} is not a{'n' if convert is int else ''} "
                              f"{convert.__name__}") from None
    return PromptDesign(**values) if values else None


def _unescape(text: str) -> str:
    r"""``\n`` and ``\t`` typed on a command line mean a newline and a tab, as in lm-eval's YAML."""
    return text.replace("\\n", "\n").replace("\\t", "\t")
