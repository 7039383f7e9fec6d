"""The objectives' collators: a list of token sequences in, the model kind's batch out.

One collator per training objective, each paired with the LightningModule whose
``logits_and_targets`` reads its batch:

| collator                 | model       | batch keys                                                  |
|--------------------------|-------------|-------------------------------------------------------------|
| ``CausalCollator``       | CausalLM    | input_ids, attention_mask (only when rows were padded)      |
| ``PrefixLMCollator``     | PrefixLM    | input_ids, prefix_lengths, attention_mask (only if padded)  |
| ``SpanCorruptionCollator`` | Seq2SeqLM | input_ids, attention_mask, labels                           |
| ``Seq2SeqCollator``      | Seq2SeqLM   | input_ids, attention_mask, labels                           |
| ``MaskingCollator``      | MaskedLM    | input_ids, attention_mask, labels (+ token_type_ids)        |

Why these shapes:

- Token ids (pad, eos, mask, sentinels, vocabulary size) are plain constructor arguments, so a collator
  is configured from YAML through jsonargparse and never imports a tokenizer class;
  ``from_tokenizer(tok, **overrides)`` fills them from any object carrying ``pad_id``, ``eos_id``,
  ``mask_id``, ``sentinel_ids``, ``vocab_size`` attributes.
- Padding is always on the right and labels hold ``IGNORE_INDEX`` (-100) where no loss is taken, which is
  what the models' cross-entropy ignores.
- Randomness comes only from the collator's own ``torch.Generator`` seeded with ``seed`` and advanced on
  every call, so a run is reproducible and two collators never share a stream. Inside a DataLoader worker
  the generator is re-seeded from ``seed`` and the worker's own seed (which the DataLoader derives from the
  global seed per epoch), so workers do not repeat each other's corruption and each epoch gets fresh
  masks, while ``seed_everything`` keeps the whole thing reproducible.
- The random choices (T5's span layout, BERT's position choice) are separated from the deterministic
  rewrite they drive (``random_spans_noise_mask`` / ``apply_span_corruption``), so the rewrite can be
  checked on hand-worked examples and the random part statistically.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any, Union

import torch

from llm_modules.padding import pad_sequences

#: the models' ignore index (llm_modules.models.base.IGNORE_INDEX), repeated so data/ need not import models/
IGNORE_INDEX = -100

Example = Any  # list[int] | 1-D LongTensor | numpy array | a pair or a mapping, depending on the collator

__all__ = [
    "IGNORE_INDEX",
    "Collator",
    "CausalCollator",
    "PrefixLMCollator",
    "SpanCorruptionCollator",
    "MaskingCollator",
    "Seq2SeqCollator",
    "pad_sequences",
    "random_segmentation",
    "span_counts",
    "random_spans_noise_mask",
    "apply_span_corruption",
    "special_ids_of",
]


# ---- pure helpers ------------------------------------------------------------------------------------------


def as_token_list(sequence: Any, what: str = "example") -> list[int]:
    """A token sequence as a list of Python ints.

    Accepts lists/tuples of ints, 1-D tensors and 1-D numpy arrays (memmap slices from the token cache),
    and mappings with an ``input_ids`` entry.
    """
    if isinstance(sequence, Mapping):
        if "input_ids" not in sequence:
            raise ValueError(f"{what} is a mapping without 'input_ids'; keys: {sorted(sequence)}")
        sequence = sequence["input_ids"]
    if hasattr(sequence, "tolist") and not isinstance(sequence, (list, tuple)):
        if getattr(sequence, "ndim", 1) != 1:
            raise ValueError(f"{what} must be a 1-D token sequence; got shape {tuple(sequence.shape)}")
        sequence = sequence.tolist()
    if not isinstance(sequence, (list, tuple)):
        raise TypeError(f"{what} must be a sequence of token ids; got {type(sequence).__name__}")
    try:
        return [int(t) for t in sequence]
    except (TypeError, ValueError):
        raise TypeError(f"{what} must contain integer token ids; got {sequence[:5]!r}...") from None


def _is_token_sequence(value: Any) -> bool:
    if isinstance(value, torch.Tensor) or hasattr(value, "ndim"):
        return getattr(value, "ndim", 0) == 1
    return isinstance(value, (list, tuple)) and all(not isinstance(v, (list, tuple)) for v in value)


def as_pair(
    example: Any, first_keys: Sequence[str], second_keys: Sequence[str], what: str
) -> tuple[list[int], list[int]] | None:
    """``(first, second)`` token lists from a 2-sequence pair or a mapping, or None for a plain sequence."""
    if isinstance(example, Mapping):
        first = next((k for k in first_keys if k in example), None)
        second = next((k for k in second_keys if k in example), None)
        if first is None or second is None:
            if "input_ids" in example and first is None and second is None:
                return None
            raise ValueError(
                f"{what} mapping needs one of {list(first_keys)} and one of {list(second_keys)}; "
                f"keys: {sorted(example)}"
            )
        return as_token_list(example[first], what), as_token_list(example[second], what)
    if isinstance(example, (list, tuple)) and len(example) == 2 and all(
        not isinstance(part, (int,)) and _is_token_sequence(part) for part in example
    ):
        return as_token_list(example[0], what), as_token_list(example[1], what)
    return None


def random_segmentation(num_items: int, num_segments: int, generator: torch.Generator | None = None) -> list[int]:
    """Split ``num_items`` into ``num_segments`` non-empty parts, uniformly over all such splits.

    T5's segmentation: choosing ``num_segments - 1`` distinct cut points among the ``num_items - 1`` gaps
    makes every composition equally likely (e.g. 4 items in 2 segments: (1, 3), (2, 2), (3, 1) each 1/3).
    """
    if not 1 <= num_segments <= num_items:
        raise ValueError(f"cannot split {num_items} items into {num_segments} non-empty segments")
    cuts = (torch.randperm(num_items - 1, generator=generator)[: num_segments - 1] + 1).sort().values.tolist()
    bounds = [0, *cuts, num_items]
    return [b - a for a, b in zip(bounds[:-1], bounds[1:])]


def span_counts(length: int, noise_density: float = 0.15, mean_noise_span_length: float = 3.0) -> tuple[int, int]:
    """``(noise tokens, noise spans)`` for a sequence of ``length`` tokens, as T5 counts them.

    noise = round(length * density) kept within [1, length - 1] (something to predict and something to
    read); spans = max(1, round(noise / mean span length)), at most the noise and the non-noise tokens.
    ``round`` is Python's (half to even, like T5's ``tf.round``): length 10 -> 2 noise tokens in 1 span.
    """
    if length < 2:
        raise ValueError(f"span corruption needs at least 2 tokens per example; got {length}")
    num_noise = min(max(round(length * noise_density), 1), length - 1)
    num_spans = max(1, round(num_noise / mean_noise_span_length))
    return num_noise, min(num_spans, num_noise, length - num_noise)


def random_spans_noise_mask(
    length: int,
    noise_density: float = 0.15,
    mean_noise_span_length: float = 3.0,
    generator: torch.Generator | None = None,
) -> list[bool]:
    """T5's noise mask: True at corrupted positions.

    The noise and non-noise counts are split independently into the same number of random segments and
    interleaved starting with non-noise, so spans never touch and the mask always ends in a noise span
    (as in T5, whose layout this reproduces).
    """
    num_noise, num_spans = span_counts(length, noise_density, mean_noise_span_length)
    noise_lengths = random_segmentation(num_noise, num_spans, generator)
    keep_lengths = random_segmentation(length - num_noise, num_spans, generator)
    mask: list[bool] = []
    for keep, noise in zip(keep_lengths, noise_lengths):
        mask += [False] * keep + [True] * noise
    return mask


def apply_span_corruption(
    tokens: Sequence[int], noise_mask: Sequence[bool], sentinel_ids: Sequence[int], eos_id: int | None
) -> tuple[list[int], list[int]]:
    """Rewrite ``tokens`` into T5's ``(inputs, targets)`` for a given noise mask.

    inputs: the kept tokens, each maximal noise span replaced by one sentinel (sentinel_ids[0], [1], ...
    in order). targets: for each span, its sentinel followed by the span's tokens. Both end with
    ``eos_id`` unless it is None. Example: tokens 10..19, noise at 12, 13 and 17, sentinels [90, 91], eos 1
    -> inputs [10, 11, 90, 14, 15, 16, 91, 18, 19, 1], targets [90, 12, 13, 91, 17, 1].
    """
    if len(tokens) != len(noise_mask):
        raise ValueError(f"noise mask has {len(noise_mask)} entries for {len(tokens)} tokens")
    inputs: list[int] = []
    targets: list[int] = []
    span = -1
    previous = False
    for token, noisy in zip(tokens, noise_mask):
        if noisy and not previous:
            span += 1
            if span >= len(sentinel_ids):
                raise ValueError(
                    f"span corruption needs more than {len(sentinel_ids)} sentinel tokens for this example; "
                    "add sentinels to the tokenizer, shorten the sequences, or lower noise_density / raise "
                    "mean_noise_span_length"
                )
            inputs.append(sentinel_ids[span])
            targets.append(sentinel_ids[span])
        (targets if noisy else inputs).append(token)
        previous = bool(noisy)
    if eos_id is not None:
        inputs.append(eos_id)
        targets.append(eos_id)
    return inputs, targets


def special_ids_of(tokenizer: Any) -> list[int]:
    """Ids a masking objective must never choose nor sample: the tokenizer's ``special_ids`` when it has
    them, else its pad/bos/eos/cls/sep/mask ids and sentinels (unknown-token stays a normal token)."""
    explicit = getattr(tokenizer, "special_ids", None)
    if explicit is not None:
        ids = list(explicit() if callable(explicit) else explicit)
    else:
        ids = [getattr(tokenizer, f"{name}_id", None) for name in ("pad", "bos", "eos", "cls", "sep", "mask")]
        ids += list(getattr(tokenizer, "sentinel_ids", None) or [])
    return sorted({int(i) for i in ids if i is not None and int(i) >= 0})


# ---- collators ---------------------------------------------------------------------------------------------


class Collator:
    """Shared plumbing: ``from_tokenizer`` and a seeded, per-worker random generator."""

    #: constructor argument -> how to read it from a tokenizer
    _FROM_TOKENIZER = {
        "pad_id": lambda tok: getattr(tok, "pad_id", None),
        "eos_id": lambda tok: getattr(tok, "eos_id", None),
        "mask_id": lambda tok: getattr(tok, "mask_id", None),
        "sentinel_ids": lambda tok: getattr(tok, "sentinel_ids", None),
        "vocab_size": lambda tok: getattr(tok, "vocab_size", None),
        "special_ids": special_ids_of,
    }

    seed: int = 0

    @classmethod
    def from_tokenizer(cls, tokenizer: Any, **overrides: Any) -> "Collator":
        """Build from any object with ``pad_id``/``eos_id``/``mask_id``/``sentinel_ids``/``vocab_size``
        attributes (values may be properties or methods; negative ids count as absent, as in SentencePiece).
        Keyword arguments win over the tokenizer's values."""
        params = inspect.signature(cls.__init__).parameters
        kwargs = dict(overrides)
        for name, read in cls._FROM_TOKENIZER.items():
            if name not in params or name in kwargs:
                continue
            value = read(tokenizer)
            if callable(value):
                value = value()
            if isinstance(value, int) and value < 0:
                value = None
            if value is not None:
                kwargs[name] = list(value) if name.endswith("_ids") else int(value)
        required = [n for n, p in params.items() if n != "self" and p.default is inspect.Parameter.empty]
        missing = [n for n in required if n not in kwargs]
        if missing:
            raise ValueError(
                f"{cls.__name__}.from_tokenizer: the tokenizer has no {', '.join(missing)}; "
                f"pass {', '.join(f'{m}=...' for m in missing)} explicitly"
            )
        return cls(**kwargs)

    def _init_rng(self, seed: int) -> None:
        self.seed = int(seed)
        self._generator = torch.Generator().manual_seed(self.seed)
        self._worker_seed: int | None = None

    @property
    def generator(self) -> torch.Generator:
        """The generator for this process: the seeded one in the main process; in a DataLoader worker one
        re-seeded from ``seed`` and the worker's seed (different per worker and per epoch)."""
        info = torch.utils.data.get_worker_info()
        if info is not None and info.seed != self._worker_seed:
            self._worker_seed = info.seed
            self._generator = self._seeded_with(info.seed)
        return self._generator

    def _seeded_with(self, key: int) -> torch.Generator:
        """A generator seeded by ``seed`` mixed with ``key`` (a worker's seed, a batch's digest)."""
        return torch.Generator().manual_seed((self.seed * 0x9E3779B97F4A7C15 + key) % (2**63 - 1))

    def restart_draws(self, key: int) -> None:
        """Draw from a generator seeded by ``seed`` and ``key`` from here on, in any process (a worker
        keeps it too): validation restarts the draws for every batch, keyed by the batch itself
        (``collate_rng.validation_collate``)."""
        self._generator = self._seeded_with(key)
        info = torch.utils.data.get_worker_info()
        self._worker_seed = None if info is None else info.seed

    def state_dict(self) -> dict[str, Any]:
        """The generator's position, so a resumed run continues the same random stream."""
        return {"seed": self.seed, "generator": self._generator.get_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._init_rng(state["seed"])
        self._generator.set_state(state["generator"])


class CausalCollator(Collator):
    """Next-token LM batches for CausalLM: right-padded ``input_ids`` (+ ``attention_mask`` when padded).

    The targets are the inputs shifted by one, which CausalLM derives itself, so no labels are sent.
    When every row has the same length (packed blocks, the usual case) no ``attention_mask`` is returned,
    so the model keeps its fused causal-attention path; ``always_attention_mask`` forces it.
    """

    def __init__(self, pad_id: int = 0, always_attention_mask: bool = False):
        self.pad_id = int(pad_id)
        self.always_attention_mask = always_attention_mask

    def __call__(self, examples: Sequence[Example]) -> dict[str, torch.Tensor]:
        sequences = [as_token_list(e) for e in examples]
        ids, mask = pad_sequences(sequences, self.pad_id)
        batch = {"input_ids": ids}
        if self.always_attention_mask or not bool(mask.all()):
            batch["attention_mask"] = mask
        return batch


Bound = Union[int, float]


class PrefixLMCollator(Collator):
    """Prefix-LM batches for PrefixLM: ``input_ids``, ``prefix_lengths`` (B,), ``attention_mask`` if padded.

    The prefix of each example is either given by the data or drawn at random:

    - given: an example that is a ``(prefix_ids, continuation_ids)`` pair, or a mapping with
      ``prefix``/``prefix_ids`` and ``continuation``/``continuation_ids`` (or ``input_ids`` plus an int
      ``prefix_length``). The continuation must not be empty (it is where the loss is); the prefix may be.
      ``append_eos`` adds ``eos_id`` after the continuation so the model learns where answers stop.
    - random: a plain token sequence of length L gets a prefix length drawn uniformly from
      [min_prefix, max_prefix]. **A float bound is a fraction of L** (rounded to a count), **an int
      bound is a token count**; either way the result is clamped to [1, L - 1], so at least one token is
      read bidirectionally and at least one is predicted. The defaults 0.0 .. 1.0 therefore mean
      "anywhere from 1 to L - 1".

    The loss (taken by PrefixLM, which masks targets inside the prefix) covers the tokens from position
    ``prefix_length`` on: for tokens [a, b, c, d] and prefix 2, the model predicts c from [a, b] and d
    from [a, b, c].
    """

    def __init__(
        self,
        pad_id: int = 0,
        min_prefix: Bound = 0.0,
        max_prefix: Bound = 1.0,
        eos_id: int | None = None,
        append_eos: bool = False,
        seed: int = 0,
    ):
        for name, bound in (("min_prefix", min_prefix), ("max_prefix", max_prefix)):
            if isinstance(bound, bool) or not isinstance(bound, (int, float)):
                raise ValueError(f"{name} must be a token count (int) or a fraction (float); got {bound!r}")
            if isinstance(bound, float) and not 0.0 <= bound <= 1.0:
                raise ValueError(f"{name} as a fraction must lie in [0, 1]; got {bound} (use an int for a token count)")
            if isinstance(bound, int) and bound < 0:
                raise ValueError(f"{name} as a token count must be >= 0; got {bound}")
        if type(min_prefix) is type(max_prefix) and min_prefix > max_prefix:
            raise ValueError(f"min_prefix ({min_prefix}) is larger than max_prefix ({max_prefix})")
        if append_eos and eos_id is None:
            raise ValueError("append_eos needs eos_id")
        self.pad_id, self.eos_id, self.append_eos = int(pad_id), eos_id, append_eos
        self.min_prefix, self.max_prefix = min_prefix, max_prefix
        self._init_rng(seed)

    def prefix_bounds(self, length: int) -> tuple[int, int]:
        """The inclusive range of prefix lengths drawn for a sequence of ``length`` tokens."""
        if length < 2:
            raise ValueError(f"a random prefix needs at least 2 tokens (one before, one after); got {length}")

        def count(bound: Bound) -> int:
            return round(bound * length) if isinstance(bound, float) else bound

        low = min(max(count(self.min_prefix), 1), length - 1)
        high = min(max(count(self.max_prefix), 1), length - 1)
        if low > high:
            raise ValueError(
                f"min_prefix={self.min_prefix!r} exceeds max_prefix={self.max_prefix!r} for a {length}-token example"
            )
        return low, high

    def split(self, example: Example) -> tuple[list[int], int]:
        """``(tokens, prefix_length)`` for one example (drawing the prefix when the data gives none)."""
        if isinstance(example, Mapping) and "prefix_length" in example:
            tokens = as_token_list(example["input_ids"], "PrefixLM example")
            prefix = int(example["prefix_length"])
            if not 0 <= prefix < len(tokens):
                raise ValueError(f"prefix_length {prefix} leaves nothing to predict in a {len(tokens)}-token example")
            return tokens, prefix
        pair = as_pair(example, ("prefix", "prefix_ids"), ("continuation", "continuation_ids"), "PrefixLM example")
        if pair is not None:
            prefix, continuation = pair
            if self.append_eos:
                continuation = continuation + [self.eos_id]
            if not continuation:
                raise ValueError("a (prefix, continuation) example has an empty continuation: nothing to predict")
            return prefix + continuation, len(prefix)
        tokens = as_token_list(example, "PrefixLM example")
        low, high = self.prefix_bounds(len(tokens))
        return tokens, int(torch.randint(low, high + 1, (1,), generator=self.generator))

    def __call__(self, examples: Sequence[Example]) -> dict[str, torch.Tensor]:
        splits = [self.split(e) for e in examples]
        ids, mask = pad_sequences([t for t, _ in splits], self.pad_id)
        batch = {"input_ids": ids, "prefix_lengths": torch.tensor([p for _, p in splits], dtype=torch.long)}
        if not bool(mask.all()):
            batch["attention_mask"] = mask
        return batch


class SpanCorruptionCollator(Collator):
    """T5 span-corruption batches for Seq2SeqLM: ``input_ids``, ``attention_mask``, ``labels``.

    Per example: ``random_spans_noise_mask`` picks round(L * noise_density) tokens in
    round(noise / mean_noise_span_length) spans; ``apply_span_corruption`` replaces each span by the next
    sentinel in the inputs and lists sentinel + span in the targets; ``eos_id`` ends both (None: no eos).
    Padding in ``labels`` is IGNORE_INDEX; the model builds decoder inputs by shifting the labels right.
    An example needing more spans than there are ``sentinel_ids`` is refused with a ValueError (a silent
    reuse of sentinels would make targets ambiguous).
    """

    def __init__(
        self,
        sentinel_ids: list[int],
        pad_id: int = 0,
        eos_id: int | None = None,
        noise_density: float = 0.15,
        mean_noise_span_length: float = 3.0,
        seed: int = 0,
    ):
        if not sentinel_ids:
            raise ValueError("sentinel_ids is empty: span corruption needs one sentinel token per noise span")
        if len(set(sentinel_ids)) != len(sentinel_ids):
            raise ValueError(f"sentinel_ids repeats ids: {sentinel_ids}")
        if not 0.0 < noise_density < 1.0:
            raise ValueError(f"noise_density must lie in (0, 1); got {noise_density}")
        if mean_noise_span_length < 1.0:
            raise ValueError(f"mean_noise_span_length must be >= 1; got {mean_noise_span_length}")
        self.sentinel_ids = [int(s) for s in sentinel_ids]
        self.pad_id, self.eos_id = int(pad_id), eos_id
        self.noise_density, self.mean_noise_span_length = float(noise_density), float(mean_noise_span_length)
        self._init_rng(seed)

    def corrupt(self, tokens: Sequence[int]) -> tuple[list[int], list[int]]:
        """``(inputs, targets)`` for one example."""
        _, num_spans = span_counts(len(tokens), self.noise_density, self.mean_noise_span_length)
        if num_spans > len(self.sentinel_ids):
            raise ValueError(
                f"a {len(tokens)}-token example gets {num_spans} noise spans but only {len(self.sentinel_ids)} "
                "sentinel_ids are configured; shorten the examples, raise mean_noise_span_length, lower "
                "noise_density, or give the tokenizer more sentinels"
            )
        mask = random_spans_noise_mask(len(tokens), self.noise_density, self.mean_noise_span_length, self.generator)
        return apply_span_corruption(tokens, mask, self.sentinel_ids, self.eos_id)

    def __call__(self, examples: Sequence[Example]) -> dict[str, torch.Tensor]:
        pairs = [self.corrupt(as_token_list(e, "span-corruption example")) for e in examples]
        input_ids, attention_mask = pad_sequences([i for i, _ in pairs], self.pad_id)
        labels, _ = pad_sequences([t for _, t in pairs], IGNORE_INDEX)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


class MaskingCollator(Collator):
    """BERT masked-LM batches for MaskedLM: ``input_ids``, ``attention_mask``, ``labels`` (+ ``token_type_ids``).

    In each sequence round(mlm_probability * n) of its n candidate positions are chosen (at least one
    when it has any), candidates being real tokens whose id is not in ``special_ids`` (nor pad/mask).
    Choosing an exact count, as BERT's data pipeline does, rather than flipping a coin per token, keeps the
    number of predictions per row stable. A chosen position becomes ``mask_id`` with probability
    ``mask_replace_prob`` (0.8), a random token with ``random_replace_prob`` (0.1) drawn from
    [0, vocab_size) without the special ids, and stays unchanged otherwise; its label is the original id,
    every other label IGNORE_INDEX. ``token_types`` adds all-zero ``token_type_ids`` (single segment).
    """

    def __init__(
        self,
        mask_id: int,
        vocab_size: int,
        pad_id: int = 0,
        special_ids: list[int] | None = None,
        mlm_probability: float = 0.15,
        mask_replace_prob: float = 0.8,
        random_replace_prob: float = 0.1,
        token_types: bool = False,
        seed: int = 0,
    ):
        if not 0.0 < mlm_probability <= 1.0:
            raise ValueError(f"mlm_probability must lie in (0, 1]; got {mlm_probability}")
        if mask_replace_prob < 0 or random_replace_prob < 0 or mask_replace_prob + random_replace_prob > 1.0:
            raise ValueError(
                "mask_replace_prob and random_replace_prob must be >= 0 and sum to at most 1; "
                f"got {mask_replace_prob} and {random_replace_prob}"
            )
        self.mask_id, self.vocab_size, self.pad_id = int(mask_id), int(vocab_size), int(pad_id)
        self.special_ids = sorted({int(i) for i in (special_ids or [])} | {self.pad_id, self.mask_id})
        self.mlm_probability = float(mlm_probability)
        self.mask_replace_prob, self.random_replace_prob = float(mask_replace_prob), float(random_replace_prob)
        self.token_types = token_types
        special = torch.tensor(self.special_ids, dtype=torch.long)
        self._random_pool = torch.ones(self.vocab_size, dtype=torch.bool)
        self._random_pool[[i for i in self.special_ids if 0 <= i < self.vocab_size]] = False
        self._random_pool = self._random_pool.nonzero().flatten()
        if random_replace_prob > 0 and len(self._random_pool) == 0:
            raise ValueError("every id in [0, vocab_size) is special: nothing to draw random replacements from")
        self._special = special
        self._init_rng(seed)

    def choose(self, candidates: torch.Tensor) -> torch.Tensor:
        """Bool (B, T): round(p * n) random candidate positions per row, at least one where n > 0."""
        counts = candidates.sum(dim=1)
        k = (counts.double() * self.mlm_probability).round().long().clamp(min=1)
        k = torch.minimum(k, counts)
        scores = torch.rand(candidates.shape, generator=self.generator).masked_fill(~candidates, 2.0)
        order = scores.argsort(dim=1)
        rank = torch.empty_like(order).scatter_(1, order, torch.arange(order.shape[1]).expand_as(order).contiguous())
        return candidates & (rank < k.unsqueeze(1))

    def __call__(self, examples: Sequence[Example]) -> dict[str, torch.Tensor]:
        original, attention_mask = pad_sequences([as_token_list(e, "masked-LM example") for e in examples], self.pad_id)
        candidates = attention_mask.bool() & ~torch.isin(original, self._special)
        chosen = self.choose(candidates)
        roll = torch.rand(original.shape, generator=self.generator)
        to_mask = chosen & (roll < self.mask_replace_prob)
        random_upto = self.mask_replace_prob + self.random_replace_prob
        to_random = chosen & (roll >= self.mask_replace_prob) & (roll < random_upto)
        input_ids = original.masked_fill(to_mask, self.mask_id)
        if len(self._random_pool):
            draws = self._random_pool[torch.randint(len(self._random_pool), original.shape, generator=self.generator)]
            input_ids = torch.where(to_random, draws, input_ids)
        batch = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": original.masked_fill(~chosen, IGNORE_INDEX),
        }
        if self.token_types:
            batch["token_type_ids"] = torch.zeros_like(input_ids)
        return batch


class Seq2SeqCollator(Collator):
    """Input -> output batches for Seq2SeqLM: ``input_ids``, ``attention_mask``, ``labels`` (-100 padding).

    Examples are ``(input_ids, target_ids)`` pairs or mappings with ``input_ids``/``inputs`` and
    ``labels``/``target_ids``/``targets``. With ``append_eos`` the targets end with ``eos_id`` (unless they
    already do), so the decoder learns to stop; the inputs are passed as given. Decoder inputs are left
    to the model, which shifts the labels right after its pad token (T5's decoder start).
    """

    def __init__(self, pad_id: int = 0, eos_id: int | None = None, append_eos: bool = False):
        if append_eos and eos_id is None:
            raise ValueError("append_eos needs eos_id")
        self.pad_id, self.eos_id, self.append_eos = int(pad_id), eos_id, append_eos

    def __call__(self, examples: Sequence[Example]) -> dict[str, torch.Tensor]:
        inputs, targets = [], []
        for example in examples:
            pair = as_pair(example, ("input_ids", "inputs"), ("labels", "target_ids", "targets"), "seq2seq example")
            if pair is None:
                raise ValueError("a seq2seq example must be an (input_ids, target_ids) pair or a mapping with both")
            source, target = pair
            if self.append_eos and (not target or target[-1] != self.eos_id):
                target = target + [self.eos_id]
            if not source or not target:
                raise ValueError("a seq2seq example has empty inputs or targets")
            inputs.append(source)
            targets.append(target)
        input_ids, attention_mask = pad_sequences(inputs, self.pad_id)
        labels, _ = pad_sequences(targets, IGNORE_INDEX)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
