"""``PromptDesign``: every demonstration-design and chain-of-thought setting, as plain data.

Plain data (strings, numbers, None) so that a design can come from command-line flags, a fit config's
``evaluate`` section or a test alike, and be written next to the results. Each value is checked when
the design is made: a bad one raises ``ConfigError`` with one line naming the field, what it accepts
and the closest valid value, which the CLI prints as its one-line error.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields

from llm_modules.registry import ConfigError, did_you_mean

DEMONSTRATIONS = ("random", "bm25", "embedding", "mmr")
ORDERS = ("similar-last", "random")
SIMILARITIES = ("bm25", "embedding")
COT_MODES = ("fewshot", "zeroshot")

#: what a chain-of-thought answer ends with, by default ("... The answer is 42."): the last such
#: sentence of a generation is the extracted answer
DEFAULT_ANSWER_PATTERN = r"[Tt]he answer is (.+?)\.?(?:\n|$)"
#: a few-shot rationale followed by the answer, in the same words the pattern above looks for
DEFAULT_RATIONALE_TEMPLATE = "{{rationale}} The answer is {{target}}."
#: Kojima et al. (2022): appended after the question
DEFAULT_TRIGGER = "Let's think step by step."
#: Wang et al. (2023) sample self-consistency paths at temperatures around 0.5-0.7
DEFAULT_TEMPERATURE = 0.7
DEFAULT_MMR_LAMBDA = 0.5


@dataclass
class PromptDesign:
    """How demonstrations are chosen, ordered and written, and how chain-of-thought is used.

    ``demonstrations``: ``random`` (seeded), ``bm25`` / ``embedding`` (the k nearest to the evaluated
    document), ``mmr`` (relevant yet diverse); None keeps the task's own lm-eval sampler unless an
    ``order`` is given (then ``random``). ``similarity``: what ``mmr`` and the ``similar-last`` order
    measure with (``bm25`` unless said; ``bm25``/``embedding`` selections use their own).
    ``order``: ``similar-last`` (the most similar demonstration next to the question) or ``random``;
    None: ``similar-last`` for similarity-based selections, the drawn order for ``random``.
    ``seed``: the seed of every random choice; each document's draw depends on the seed and the
    document only, so a document gets the same demonstrations whatever ``--limit`` or order.
    ``demo_template``/``question_template``: jinja over the document's fields plus ``text`` (the
    task's rendering of the question), ``target`` (the answer; with few-shot chain-of-thought the
    rationale and the answer) and ``rationale``; the question template defaults to the demonstration
    template up to its last placeholder. ``separator``: between demonstrations and before the
    question (default: the task's ``fewshot_delimiter``).
    ``cot``: ``fewshot`` (demonstrations answer with ``rationale_template`` over the document's
    ``rationale_field``) or ``zeroshot`` (``cot_trigger`` after the question). ``answer_pattern``:
    a regex whose (last) match in a generation is the answer scored (default with ``cot``: "The
    answer is X"). ``self_consistency``: k sampled generations at ``temperature``, the majority
    answer scored.
    """

    demonstrations: str | None = None
    similarity: str | None = None
    order: str | None = None
    mmr_lambda: float | None = None
    seed: int = 1234
    demo_template: str | None = None
    question_template: str | None = None
    separator: str | None = None
    cot: str | None = None
    rationale_field: str = "rationale"
    rationale_template: str = DEFAULT_RATIONALE_TEMPLATE
    cot_trigger: str = DEFAULT_TRIGGER
    answer_pattern: str | None = None
    self_consistency: int = 1
    temperature: float | None = None

    def __post_init__(self) -> None:
        _check_types(self)
        _check_choice("demonstrations", self.demonstrations, DEMONSTRATIONS)
        _check_choice("similarity", self.similarity, SIMILARITIES)
        _check_choice("order", self.order, ORDERS)
        _check_choice("cot", self.cot, COT_MODES)
        if self.similarity is not None and self.demonstrations in ("bm25", "embedding") \
                and self.similarity != self.demonstrations:
            raise ConfigError(f"similarity: --demonstrations {self.demonstrations} ranks by {self.demonstrations}; "
                              f"drop --similarity {self.similarity}, or use --demonstrations mmr")
        if self.mmr_lambda is not None:
            if self.demonstrations != "mmr":
                raise ConfigError("mmr_lambda: only used with --demonstrations mmr")
            if not 0.0 <= self.mmr_lambda <= 1.0:
                raise ConfigError(f"mmr_lambda: {self.mmr_lambda} is outside [0, 1] "
                                  f"(1: relevance only, 0: diversity only); try {DEFAULT_MMR_LAMBDA}")
        if self.self_consistency < 1:
            raise ConfigError(f"self_consistency: {self.self_consistency} samples; give 1 (off) or more, e.g. 5")
        if self.temperature is not None:
            if self.self_consistency < 2:
                raise ConfigError("temperature: only used to sample self-consistency paths; "
                                  "add --self_consistency k (k > 1)")
            if self.temperature <= 0:
                raise ConfigError(f"temperature: {self.temperature} must be > 0 to sample; try {DEFAULT_TEMPERATURE}")
        if self.cot == "zeroshot" and not self.cot_trigger.strip():
            raise ConfigError(f"cot_trigger: empty; zero-shot chain-of-thought needs one, e.g. {DEFAULT_TRIGGER!r}")
        if self.cot == "fewshot" and not self.rationale_field:
            raise ConfigError("rationale_field: empty; name the documents' field that holds the rationale, "
                              "e.g. 'rationale'")
        for name in ("demo_template", "question_template", "rationale_template"):
            _check_template(name, getattr(self, name))
        if self.answer_pattern is not None:
            try:
                re.compile(self.answer_pattern)
            except re.error as err:
                raise ConfigError(f"answer_pattern: {self.answer_pattern!r} is no regular expression ({err})") from None

    # ---- resolved settings: what the unset (None) fields mean ------------------------------------------

    @property
    def selects(self) -> bool:
        """Whether this design chooses the demonstrations (else lm-eval's sampler of the task does)."""
        return self.demonstrations is not None or self.order is not None

    @property
    def strategy(self) -> str:
        return self.demonstrations or "random"

    @property
    def similarity_measure(self) -> str:
        if self.strategy in ("bm25", "embedding"):
            return self.strategy
        return self.similarity or "bm25"

    @property
    def ordering(self) -> str:
        if self.order is not None:
            return self.order
        return "random" if self.strategy == "random" else "similar-last"

    @property
    def needs_similarity(self) -> bool:
        return self.strategy != "random" or self.ordering == "similar-last"

    @property
    def needs_embeddings(self) -> bool:
        return self.selects and self.needs_similarity and self.similarity_measure == "embedding"

    @property
    def lam(self) -> float:
        return DEFAULT_MMR_LAMBDA if self.mmr_lambda is None else self.mmr_lambda

    @property
    def renders(self) -> bool:
        """Whether demonstrations/question are written by this design rather than by lm-eval."""
        return (self.demo_template is not None or self.question_template is not None
                or self.separator is not None or self.cot == "fewshot")

    @property
    def pattern(self) -> str | None:
        if self.answer_pattern is not None:
            return self.answer_pattern
        return DEFAULT_ANSWER_PATTERN if self.cot is not None else None

    @property
    def sampling_temperature(self) -> float:
        return DEFAULT_TEMPERATURE if self.temperature is None else self.temperature

    @property
    def generative(self) -> bool:
        """Whether this design only makes sense for generated answers (generate_until tasks)."""
        return self.cot is not None or self.answer_pattern is not None or self.self_consistency > 1

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict | None) -> PromptDesign | None:
        """A design from a mapping (a config section); None or {} is no design. An unknown key is
        a one-line error with the closest field name."""
        if not values:
            return None
        if not isinstance(values, dict):
            raise ConfigError(f"prompting: expected a mapping of PromptDesign fields, got {type(values).__name__}")
        known = [f.name for f in fields(cls)]
        for key in values:
            if key not in known:
                raise ConfigError(f"prompting: unknown field {key!r}{did_you_mean(key, known)}; fields: {', '.join(known)}")
        return cls(**values)


_TYPES = {"demonstrations": str, "similarity": str, "order": str, "mmr_lambda": float, "seed": int,
          "demo_template": str, "question_template": str, "separator": str, "cot": str,
          "rationale_field": str, "rationale_template": str, "cot_trigger": str, "answer_pattern": str,
          "self_consistency": int, "temperature": float}


def _check_types(design: PromptDesign) -> None:
    for field in fields(design):
        value, kind = getattr(design, field.name), _TYPES[field.name]
        if value is None and field.default is None:
            continue
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            setattr(design, field.name, float(value))
            continue
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ConfigError(f"{field.name}: {value!r} is not {'an' if kind is int else 'a'} {kind.__name__}")


def _check_choice(name: str, value: str | None, choices: tuple[str, ...]) -> None:
    if value is not None and value not in choices:
        raise ConfigError(f"{name}: unknown {value!r}{did_you_mean(value, choices)}; choose one of {', '.join(choices)}")


def _check_template(name: str, template: str | None) -> None:
    if template is None:
        return
    import jinja2

    try:
        jinja2.Environment().parse(template)
    except jinja2.TemplateSyntaxError as err:
        raise ConfigError(f"{name}: {template!r} is no jinja template ({err.message})") from None
