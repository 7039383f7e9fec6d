"""The search algorithms on a fake session whose logits are a fixed table indexed by the last token
(a Markov chain), so the right answers follow in closed form: greedy follows the table's argmax, beam
search with enough beams is an exhaustive search, samples stay inside the allowed sets."""

from __future__ import annotations

import itertools

import pytest
import torch

from llm_modules.generation import GenerationConfig
from llm_modules.generation.processors import LogitsProcessors, repetition_penalty, top_k, top_p
from llm_modules.generation.search import decode
from llm_modules.registry import ConfigError

PAD = 0


class TableSession:
    """Next-token logits = ``table[last token]``; counts model calls."""

    def __init__(self, table: torch.Tensor, prefix: torch.Tensor, prefix_mask: torch.Tensor | None = None):
        self.table = table
        self.prefix_ids = prefix
        self.prefix_mask = torch.ones_like(prefix) if prefix_mask is None else prefix_mask
        self.last = prefix[:, -1]
        self.calls = 0

    def start(self) -> torch.Tensor:
        self.calls += 1
        return self.table[self.last].clone()

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.last = tokens
        return self.table[tokens].clone()

    def reorder(self, index: torch.Tensor) -> None:
        self.last = self.last[index]
        self.prefix_ids, self.prefix_mask = self.prefix_ids[index], self.prefix_mask[index]


def run(table, prefix, **options):
    tokenizer = options.pop("tokenizer", None)
    generator = options.pop("generator", None)
    streamer = options.pop("streamer", None)
    session = TableSession(table, prefix)
    return decode(session, GenerationConfig(pad_token_id=PAD, **options), tokenizer=tokenizer,
                  generator=generator, streamer=streamer)


def random_table(vocab: int, seed: int, scale: float = 3.0) -> torch.Tensor:
    return torch.randn(vocab, vocab, generator=torch.Generator().manual_seed(seed)) * scale


# ---- greedy ---------------------------------------------------------------------------------------------


def test_greedy_follows_the_argmax_chain_for_exactly_max_new_tokens():
    table = random_table(7, seed=0)
    prefix = torch.tensor([[3, 1], [2, 5]])
    out = run(table, prefix, max_new_tokens=6)
    assert out.shape == (2, 8) and torch.equal(out[:, :2], prefix)
    for row in out.tolist():
        for before, after in zip(row[1:-1], row[2:]):
            assert after == int(table[before].argmax())


def test_stop_tokens_end_rows_and_pad_the_rest():
    # 1 -> 2 -> 3 -> 4 -> 1 ...; row 0 starts at 1 and meets eos 3 after two steps, row 1 after four
    table = torch.full((6, 6), -5.0)
    for a, b in [(1, 2), (2, 3), (3, 4), (4, 1), (5, 4)]:
        table[a, b] = 5.0
    prefix = torch.tensor([[1], [5]])
    out = run(table, prefix, max_new_tokens=10, eos_token_id=3)
    assert out.tolist() == [[1, 2, 3, PAD, PAD], [5, 4, 1, 2, 3]]  # width: the last row's stop
    out = run(table, prefix, max_new_tokens=10, eos_token_id=[3, 4])
    assert out.tolist() == [[1, 2, 3], [5, 4, PAD]]
    out = run(table, prefix, max_new_tokens=3, eos_token_id=[])
    assert out.tolist() == [[1, 2, 3, 4], [5, 4, 1, 2]]


def test_max_new_tokens_zero_returns_the_prefix_without_running_the_model():
    prefix = torch.tensor([[1, 2]])
    for options in ({}, {"num_beams": 3}, {"do_sample": True, "seed": 0}):
        session = TableSession(random_table(5, 0), prefix)
        out = decode(session, GenerationConfig(max_new_tokens=0, **options))
        assert torch.equal(out, prefix) and session.calls == 0


def test_streamer_sees_each_step_and_the_model_runs_once_per_token():
    table = random_table(6, seed=1)
    seen = []
    session = TableSession(table, torch.tensor([[1], [2]]))
    out = decode(session, GenerationConfig(max_new_tokens=4), streamer=lambda tokens: seen.append(tokens.clone()))
    assert torch.equal(torch.stack(seen, dim=1), out[:, 1:])
    assert session.calls == 4  # start + 3 steps: no model call after the last token


def test_repetition_penalty_steers_greedy_away_from_seen_tokens():
    table = torch.full((5, 5), -1.0)
    table[:, 2] = 2.0  # every token prefers 2 ...
    table[:, 3] = 1.5  # ... then 3 ...
    table[:, 4] = 1.2  # ... then 4
    prefix = torch.tensor([[1]])
    assert run(table, prefix, max_new_tokens=3).tolist() == [[1, 2, 2, 2]]
    # penalty 2: once 2 is seen it scores 1.0 and 3 (1.5) wins; then 4 (1.2 > 1.0, 0.75); then 2
    # again (1.0 > 0.75, 0.6): the penalty is the same however often a token was seen
    assert run(table, prefix, max_new_tokens=4, repetition_penalty=2.0).tolist() == [[1, 2, 3, 4, 2]]


def test_repetition_penalty_function():
    scores = torch.tensor([[2.0, -2.0, 1.0, -1.0, 0.0]])
    sequences = torch.tensor([[0, 1, 4, 2, 2]])
    seen = torch.tensor([[1, 1, 1, 0, 1]])  # 2 appears at a padding position and a real one: counts
    out = repetition_penalty(scores, sequences, seen, 2.0)
    assert out.tolist() == [[1.0, -4.0, 0.5, -1.0, 0.0]]
    seen = torch.tensor([[1, 1, 1, 0, 0]])  # 2 only at padding: not penalised
    assert repetition_penalty(scores, sequences, seen, 2.0)[0, 2] == 1.0


# ---- beam search ----------------------------------------------------------------------------------------


def exhaustive_best(table, start: int, eos: int, max_new: int, length_penalty: float) -> list[int]:
    """The best finished sequence over all of them: ends with eos, or reaches max_new tokens."""
    logprobs = table.log_softmax(-1)
    vocab = table.shape[0]
    best, best_score = None, -float("inf")
    for length in range(1, max_new + 1):
        for tokens in itertools.product(range(vocab), repeat=length):
            if eos in tokens[:-1] or (tokens[-1] != eos and length < max_new):
                continue
            total = sum(float(logprobs[a, b]) for a, b in zip((start,) + tokens, tokens))
            score = total / length**length_penalty
            if score > best_score:
                best, best_score = list(tokens), score
    return best


@pytest.mark.parametrize("length_penalty", [0.0, 1.0, 2.5, -1.0])
def test_beam_search_with_enough_beams_is_exhaustive(length_penalty):
    """With more beams than live hypotheses and early_stopping="never", nothing is pruned, and
    the stopping bound is exact: the answer is the best of all finished sequences."""
    vocab, eos, max_new = 4, 3, 4
    for seed in range(3):
        table = random_table(vocab, seed=seed, scale=1.5)
        prefix = torch.tensor([[0], [1], [2]])
        out = run(table, prefix, max_new_tokens=max_new, num_beams=64, eos_token_id=eos,
                  length_penalty=length_penalty, early_stopping="never")
        for row, start in enumerate(prefix[:, 0].tolist()):
            expected = exhaustive_best(table, start, eos, max_new, length_penalty)
            got = out[row, 1:].tolist()
            assert got[: len(expected)] == expected and set(got[len(expected):]) <= {PAD}, (seed, row, got, expected)


def test_beam_search_finds_what_greedy_misses():
    """Greedy takes 1 (p=0.5) then a flat 0.25-each; beam search finds 2 (p=0.4) then 3 (p~1)."""
    table = torch.full((5, 5), -30.0)
    table[0, 1], table[0, 2], table[0, 4] = 0.0, -0.2231, -1.6094  # 0.5 / 0.4 / 0.1
    table[1, :4] = 0.0  # flat
    table[2, 3] = 0.0
    table[3, 4] = 0.0
    table[4, 4] = 0.0
    prefix = torch.tensor([[0]])
    assert run(table, prefix, max_new_tokens=2).tolist()[0][1] == 1
    assert run(table, prefix, max_new_tokens=2, num_beams=2).tolist() == [[0, 2, 3]]


def test_early_stopping_modes_with_a_length_penalty_that_favours_long_outputs():
    """From 0: stop token 4 (p=0.35) or 2 (p=0.33) at once, or 1 -> 3 -> 4 (p=0.32 * 1 * 1). With
    length_penalty 2 the long one scores log(0.32) / 3**2 = -0.127, better than log(0.35) = -1.05.
    Two beams: both stop tokens fill the finished list at the first step, and the running beam's
    score over its current length (1) cannot beat them, so True and False stop there; "never"
    bounds with the longest possible length (4) and goes on to find the long one."""
    table = torch.full((5, 5), -30.0)
    table[0, 4], table[0, 2], table[0, 1] = torch.tensor([0.35, 0.33, 0.32]).log()
    table[1, 3] = 0.0
    table[3, 4] = 0.0
    prefix = torch.tensor([[0]])
    results = {}
    for mode in (False, True, "never"):
        config = GenerationConfig(max_new_tokens=4, num_beams=2, eos_token_id=[4, 2], length_penalty=2.0,
                                  early_stopping=mode, pad_token_id=PAD)
        results[mode] = decode(TableSession(table, prefix), config).tolist()
    assert results == {False: [[0, 4]], True: [[0, 4]], "never": [[0, 1, 3, 4]]}


def test_beam_early_stopping_true_stops_once_beams_are_finished():
    table = random_table(6, seed=4, scale=1.0)
    table[:, 5] += 2.0  # eos (5) is likely everywhere: beams finish quickly
    session = TableSession(table, torch.tensor([[0]]))
    decode(session, GenerationConfig(max_new_tokens=30, num_beams=2, eos_token_id=5, early_stopping=True, pad_token_id=PAD))
    assert session.calls < 30


# ---- sampling -------------------------------------------------------------------------------------------

PROBS = torch.tensor([0.5, 0.3, 0.15, 0.05])  # tokens 0..3 of a 4-token vocabulary


def sample_once(options, rows=2000, probs=PROBS) -> torch.Tensor:
    """One sampled token for each of ``rows`` identical rows (their first token's logits = log probs)."""
    table = probs.log().expand(len(probs), -1).contiguous()
    return run(table, torch.zeros(rows, 1, dtype=torch.long), max_new_tokens=1, do_sample=True, **options)[:, 1]


@pytest.mark.parametrize("options, allowed", [
    ({"top_k": 1}, {0}),
    ({"top_k": 3}, {0, 1, 2}),
    ({"top_p": 0.3}, {0}),         # 0.5 alone reaches 0.3
    ({"top_p": 0.7}, {0, 1}),      # 0.5 < 0.7 <= 0.5 + 0.3
    ({"top_p": 0.9}, {0, 1, 2}),   # 0.8 < 0.9 <= 0.95
    ({"top_p": 1.0}, {0, 1, 2, 3}),
    ({"top_k": 2, "top_p": 0.99}, {0, 1}),
    ({"top_p": 0.9, "temperature": 0.5}, {0, 1}),  # sharper: 0.685 + 0.247 reaches 0.9 (next test)
])
def test_top_k_and_top_p_sample_only_allowed_tokens(options, allowed):
    tokens = sample_once({**options, "seed": 7})
    assert set(tokens.tolist()) == allowed  # nothing outside; with 2000 draws every allowed token shows


def test_temperature_sharpened_probabilities_are_what_the_top_p_case_assumes():
    sharp = (PROBS.log() / 0.5).softmax(-1)
    assert sharp[0] + sharp[1] > 0.9 > sharp[0]


def test_top_p_keeps_the_most_likely_token_even_when_it_alone_exceeds_p():
    scores = torch.tensor([[0.0, 10.0, 1.0]])
    assert torch.isfinite(top_p(scores, 0.01)).tolist() == [[False, True, False]]


def test_top_k_keeps_ties_with_the_kth():
    scores = torch.tensor([[3.0, 1.0, 2.0, 2.0]])
    assert torch.isfinite(top_k(scores, 2)).tolist() == [[True, False, True, True]]


def test_processors_apply_in_hugging_face_order():
    """Penalty before temperature before top-k before top-p (top-p sees the top-k survivors)."""
    config = GenerationConfig(do_sample=True, repetition_penalty=2.0, temperature=0.5, top_k=3, top_p=0.8)
    scores = torch.tensor([[4.0, 3.0, 2.5, 1.0]])
    out = LogitsProcessors(config)(scores, torch.tensor([[0]]), torch.tensor([[1]]))
    # penalty: token 0 -> 2.0; temperature: [4, 6, 5, 2]; top-k 3 drops token 3; probabilities of the
    # rest 0.09 / 0.665 / 0.245, and top-p 0.8 needs tokens 1 and 2 only
    inf = float("inf")
    expected = torch.tensor([[-inf, 6.0, 5.0, -inf]])
    assert torch.equal(out, expected)


def test_sampling_is_reproducible_and_leaves_the_global_rng_alone():
    table = random_table(50, seed=3, scale=0.3)  # flat-ish
    prefix = torch.tensor([[1], [2], [3]])
    state = torch.get_rng_state()
    first = run(table, prefix, max_new_tokens=20, do_sample=True, seed=11)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(run(table, prefix, max_new_tokens=20, do_sample=True, seed=11), first)
    assert not torch.equal(run(table, prefix, max_new_tokens=20, do_sample=True, seed=12), first)
    generator = torch.Generator().manual_seed(11)
    assert torch.equal(run(table, prefix, max_new_tokens=20, do_sample=True, generator=generator), first)
    unseeded = run(table, prefix, max_new_tokens=20, do_sample=True)
    assert torch.equal(torch.get_rng_state(), state) and unseeded.shape == first.shape


def test_decode_refuses_contradictory_options():
    table, prefix = random_table(5, 0), torch.tensor([[1]])
    with pytest.raises(ConfigError, match="seed or generator"):
        run(table, prefix, do_sample=True, seed=1, generator=torch.Generator())
    with pytest.raises(ConfigError, match="streamer"):
        run(table, prefix, num_beams=2, streamer=print)
    with pytest.raises(ConfigError, match="stop_strings need a tokenizer"):
        run(table, prefix, stop_strings="x")
    with pytest.raises(ConfigError, match="pad_token_id"):
        decode(TableSession(table, prefix), GenerationConfig(eos_token_id=2))


@pytest.mark.parametrize("options, match", [
    ({"top_p": 0.0, "do_sample": True}, "top_p"),
    ({"top_p": 1.5, "do_sample": True}, "top_p"),
    ({"temperature": 0.0, "do_sample": True}, "temperature"),
    ({"top_k": 0, "do_sample": True}, "top_k"),
    ({"num_beams": 0}, "num_beams"),
    ({"max_new_tokens": -1}, "max_new_tokens"),
    ({"repetition_penalty": 0.0}, "repetition_penalty"),
    ({"num_beams": 2, "do_sample": True}, "num_beams"),
    ({"temperature": 0.7}, "temperature=0.7 only applies when sampling"),
    ({"top_k": 5}, "top_k=5 only applies when sampling"),
    ({"length_penalty": 2.0}, "length_penalty=2.0 only applies to beam search"),
    ({"early_stopping": True}, "early_stopping"),
    ({"num_beams": 2, "early_stopping": "always"}, "early_stopping must be"),
    ({"eos_token_id": -1}, "eos_token_id"),
    ({"eos_token_id": [2, "x"]}, "eos_token_id"),
    ({"stop_strings": [""]}, "stop_strings"),
    ({"do_sample": "yes"}, "do_sample"),
])
def test_config_errors_name_the_field(options, match):
    with pytest.raises(ConfigError, match=match):
        GenerationConfig(**options)
