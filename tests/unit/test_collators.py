"""The objectives' collators, checked against hand-worked examples.

Where a collator draws at random, the deterministic rewrite it drives is a pure function tested on
inputs worked out by hand, and the random part is tested statistically over many draws. Each collator's
batch also goes through its LightningModule's ``compute_loss`` once.
"""

from __future__ import annotations

import pickle
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from llm_modules import CausalLM, MaskedLM, ModelConfig, PrefixLM, Seq2SeqLM
from llm_modules.data.collators import (
    IGNORE_INDEX,
    CausalCollator,
    MaskingCollator,
    PrefixLMCollator,
    Seq2SeqCollator,
    SpanCorruptionCollator,
    apply_span_corruption,
    as_token_list,
    pad_sequences,
    random_segmentation,
    random_spans_noise_mask,
    span_counts,
    special_ids_of,
)
from llm_modules.models.base import IGNORE_INDEX as MODEL_IGNORE_INDEX

PAD, EOS, BOS, MASK = 0, 1, 2, 3
SENTINELS = list(range(63, 47, -1))  # 16 sentinels counted down from the top of a 64-token vocabulary, as T5 does
N = -100


def tiny_config(**overrides) -> ModelConfig:
    return ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, **overrides)


def finite_loss(module, batch) -> float:
    torch.manual_seed(0)
    out = module.compute_loss(batch)
    assert torch.isfinite(out["loss"]), out
    assert out["tokens"] > 0
    return float(out["loss"].detach())


def runs(mask):
    """Lengths of the maximal True runs of a boolean list."""
    lengths, current = [], 0
    for flag in list(mask) + [False]:
        if flag:
            current += 1
        elif current:
            lengths.append(current)
            current = 0
    return lengths


def test_ignore_index_matches_the_models():
    assert IGNORE_INDEX == MODEL_IGNORE_INDEX == -100


# ---- shared helpers ----------------------------------------------------------------------------------------


def test_token_sequences_in_every_form():
    assert as_token_list([4, 5]) == [4, 5]
    assert as_token_list(torch.tensor([4, 5])) == [4, 5]
    assert as_token_list(np.array([4, 5], dtype=np.uint16)) == [4, 5]
    assert as_token_list({"input_ids": (4, 5)}) == [4, 5]
    with pytest.raises(ValueError, match="1-D"):
        as_token_list(torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(TypeError, match="integer token ids"):
        as_token_list(["a", "b"])


def test_pad_sequences_exact():
    ids, mask = pad_sequences([[7, 8, 9], [5], [6, 6]], pad_value=0)
    assert ids.tolist() == [[7, 8, 9], [5, 0, 0], [6, 6, 0]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0], [1, 1, 0]]
    assert ids.dtype == mask.dtype == torch.long
    with pytest.raises(ValueError, match="empty batch"):
        pad_sequences([], 0)


# ---- causal ------------------------------------------------------------------------------------------------


def test_causal_pads_right_with_a_mask():
    batch = CausalCollator(pad_id=PAD)([[10, 11, 12], torch.tensor([13, 14])])
    assert batch["input_ids"].tolist() == [[10, 11, 12], [13, 14, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    # CausalLM's own targets: next token, nothing predicted from the last real token onward
    _, targets = CausalLM(tiny_config()).logits_and_targets(batch)
    assert targets.tolist() == [[11, 12, N], [14, N, N]]


def test_causal_equal_lengths_leave_out_the_mask():
    batch = CausalCollator()([[10, 11], [12, 13]])
    assert set(batch) == {"input_ids"}
    assert batch["input_ids"].tolist() == [[10, 11], [12, 13]]
    assert "attention_mask" in CausalCollator(always_attention_mask=True)([[10, 11], [12, 13]])


def test_causal_end_to_end():
    lm = CausalLM(tiny_config())
    finite_loss(lm, CausalCollator()([list(range(4, 20)), list(range(20, 30))]))
    finite_loss(lm, CausalCollator()([list(range(4, 20)), list(range(20, 36))]))


# ---- prefix LM ---------------------------------------------------------------------------------------------


def test_prefix_bounds_fractions_and_counts():
    assert PrefixLMCollator().prefix_bounds(10) == (1, 9)  # defaults: anywhere with one token each side
    assert PrefixLMCollator(min_prefix=0.2, max_prefix=0.5).prefix_bounds(10) == (2, 5)  # fractions of L
    assert PrefixLMCollator(min_prefix=3, max_prefix=4).prefix_bounds(10) == (3, 4)  # token counts
    assert PrefixLMCollator(min_prefix=3, max_prefix=50).prefix_bounds(10) == (3, 9)  # clamped to L - 1
    assert PrefixLMCollator(min_prefix=0, max_prefix=0).prefix_bounds(10) == (1, 1)  # clamped to 1
    assert PrefixLMCollator().prefix_bounds(2) == (1, 1)
    with pytest.raises(ValueError, match="at least 2 tokens"):
        PrefixLMCollator().prefix_bounds(1)
    with pytest.raises(ValueError, match="larger than max_prefix"):
        PrefixLMCollator(min_prefix=0.6, max_prefix=0.4)
    with pytest.raises(ValueError, match="fraction must lie"):
        PrefixLMCollator(max_prefix=1.5)
    with pytest.raises(ValueError, match="exceeds"):
        PrefixLMCollator(min_prefix=8, max_prefix=0.5).prefix_bounds(10)


def test_prefix_random_lengths_cover_the_bounds_uniformly():
    collate = PrefixLMCollator(min_prefix=0.25, max_prefix=0.75, seed=3)  # L = 8 -> prefixes 2..6
    seen = Counter()
    for _ in range(200):
        batch = collate([list(range(10, 18))] * 10)
        seen.update(batch["prefix_lengths"].tolist())
        assert set(batch) == {"input_ids", "prefix_lengths"}  # equal lengths: no attention_mask
    assert sorted(seen) == [2, 3, 4, 5, 6]
    for count in seen.values():
        assert abs(count / 2000 - 0.2) < 0.03


def test_prefix_from_the_data_hand_worked():
    collate = PrefixLMCollator(pad_id=PAD)
    batch = collate([([10, 11], [12, 13, 14]), {"prefix": torch.tensor([20]), "continuation": [21, 22]}])
    assert batch["input_ids"].tolist() == [[10, 11, 12, 13, 14], [20, 21, 22, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    assert batch["prefix_lengths"].tolist() == [2, 1]
    # PrefixLM takes the loss only on tokens after the prefix: row 0 predicts 12, 13, 14 (not 11);
    # row 1 predicts 21 and 22, and nothing from the padding.
    lm = PrefixLM(tiny_config())
    _, targets = lm.logits_and_targets(batch)
    assert targets.tolist() == [[N, 12, 13, 14, N], [21, 22, N, N, N]]
    finite_loss(lm, batch)


def test_prefix_other_data_forms_and_eos():
    collate = PrefixLMCollator(eos_id=EOS, append_eos=True)
    batch = collate([{"prefix_ids": [5, 6], "continuation_ids": [7]}, ([], [8, 9])])
    assert batch["input_ids"].tolist() == [[5, 6, 7, 1], [8, 9, 1, 0]]
    assert batch["prefix_lengths"].tolist() == [2, 0]
    batch = PrefixLMCollator()([{"input_ids": [4, 5, 6], "prefix_length": 2}])
    assert batch["prefix_lengths"].tolist() == [2]
    with pytest.raises(ValueError, match="nothing to predict"):
        PrefixLMCollator()([([4, 5], [])])
    with pytest.raises(ValueError, match="nothing to predict"):
        PrefixLMCollator()([{"input_ids": [4, 5], "prefix_length": 2}])
    with pytest.raises(ValueError, match="append_eos needs eos_id"):
        PrefixLMCollator(append_eos=True)


def test_prefix_random_end_to_end_and_loss_positions():
    collate = PrefixLMCollator(seed=1)
    batch = collate([list(range(4, 16)), list(range(16, 24))])
    lm = PrefixLM(tiny_config())
    _, targets = lm.logits_and_targets(batch)
    for row, prefix in enumerate(batch["prefix_lengths"].tolist()):
        length = int(batch["attention_mask"][row].sum())
        assert 1 <= prefix <= length - 1
        expected = [N] * (prefix - 1) + batch["input_ids"][row, prefix:length].tolist()
        expected += [N] * (targets.shape[1] - len(expected))
        assert targets[row].tolist() == expected
    finite_loss(lm, batch)


def test_prefix_is_deterministic_with_a_seed():
    data = [list(range(4, 40))] * 8
    a, b = PrefixLMCollator(seed=7), PrefixLMCollator(seed=7)
    first = [a(data)["prefix_lengths"].tolist() for _ in range(3)]
    assert first == [b(data)["prefix_lengths"].tolist() for _ in range(3)]
    assert first[0] != first[1]  # the generator advances per call
    assert first[0] != PrefixLMCollator(seed=8)(data)["prefix_lengths"].tolist()


def test_prefix_bounds_types_survive_jsonargparse():
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_class_arguments(PrefixLMCollator, "collator")
    cfg = parser.parse_args(["--collator.min_prefix", "3", "--collator.max_prefix", "0.5"])
    assert cfg.collator.min_prefix == 3 and isinstance(cfg.collator.min_prefix, int)
    assert cfg.collator.max_prefix == 0.5 and isinstance(cfg.collator.max_prefix, float)


# ---- span corruption (T5) ----------------------------------------------------------------------------------


def test_span_counts_hand_worked():
    assert span_counts(10) == (2, 1)  # round(1.5) = 2 noise tokens, round(2 / 3) = 1 span
    assert span_counts(100) == (15, 5)
    assert span_counts(20) == (3, 1)
    assert span_counts(30) == (4, 1)  # round(4.5) = 4: half to even, as tf.round
    assert span_counts(512) == (77, 26)
    assert span_counts(2) == (1, 1)  # at least one noise and one kept token
    assert span_counts(10, noise_density=0.5, mean_noise_span_length=1) == (5, 5)
    with pytest.raises(ValueError, match="at least 2 tokens"):
        span_counts(1)


def test_apply_span_corruption_hand_worked():
    tokens = list(range(10, 20))
    mask = [0, 0, 1, 1, 0, 0, 0, 1, 0, 0]
    inputs, targets = apply_span_corruption(tokens, mask, [90, 91, 92], eos_id=1)
    assert inputs == [10, 11, 90, 14, 15, 16, 91, 18, 19, 1]
    assert targets == [90, 12, 13, 91, 17, 1]

    # noise at both ends, adjacent-to-the-edge spans, no eos
    mask = [1, 0, 0, 0, 0, 0, 0, 0, 1, 1]
    assert apply_span_corruption(tokens, mask, [90, 91], eos_id=None) == (
        [90, 11, 12, 13, 14, 15, 16, 17, 91],
        [90, 10, 91, 18, 19],
    )
    # T5's layout (ends in noise)
    mask = [0, 0, 0, 0, 0, 0, 0, 0, 1, 1]
    assert apply_span_corruption(tokens, mask, [63, 62], eos_id=1) == (
        [10, 11, 12, 13, 14, 15, 16, 17, 63, 1],
        [63, 18, 19, 1],
    )
    with pytest.raises(ValueError, match="sentinel"):
        apply_span_corruption(tokens, [1, 0] * 5, [90, 91], eos_id=1)  # five spans, two sentinels
    with pytest.raises(ValueError, match="noise mask has 3 entries"):
        apply_span_corruption(tokens, [1, 0, 0], [90], eos_id=1)


def test_random_segmentation_hand_worked_and_uniform():
    g = torch.Generator().manual_seed(0)
    assert random_segmentation(3, 1, g) == [3]
    assert random_segmentation(5, 5, g) == [1, 1, 1, 1, 1]
    with pytest.raises(ValueError, match="non-empty segments"):
        random_segmentation(2, 3, g)
    # 4 items in 2 non-empty segments: (1, 3), (2, 2), (3, 1), each with probability 1/3
    seen = Counter(tuple(random_segmentation(4, 2, g)) for _ in range(3000))
    assert set(seen) == {(1, 3), (2, 2), (3, 1)}
    for count in seen.values():
        assert abs(count / 3000 - 1 / 3) < 0.04
    for _ in range(100):
        parts = random_segmentation(40, 7, g)
        assert len(parts) == 7 and sum(parts) == 40 and min(parts) >= 1


def test_noise_mask_layout():
    g = torch.Generator().manual_seed(0)
    for length in (2, 10, 37, 100, 256):
        num_noise, num_spans = span_counts(length)
        for _ in range(20):
            mask = random_spans_noise_mask(length, generator=g)
            assert len(mask) == length and sum(mask) == num_noise
            assert len(runs(mask)) == num_spans
            assert not mask[0] and mask[-1]  # T5: starts with kept tokens, ends with a noise span


def test_noise_density_and_mean_span_statistics():
    g = torch.Generator().manual_seed(0)
    noise = spans = total = 0
    position_hits = Counter()
    for _ in range(400):
        length = int(torch.randint(50, 300, (1,), generator=g))
        mask = random_spans_noise_mask(length, 0.15, 3.0, g)
        noise += sum(mask)
        spans += len(runs(mask))
        total += length
        position_hits.update(i for i in range(50) if mask[i])
    assert abs(noise / total - 0.15) < 0.005
    assert abs(noise / spans - 3.0) < 0.1
    # spans land everywhere, not at fixed places: each of the first 50 positions but the first is hit
    assert set(position_hits) == set(range(1, 50))


def test_span_collator_batch_reconstructs_the_text():
    collate = SpanCorruptionCollator(sentinel_ids=SENTINELS, pad_id=PAD, eos_id=EOS, seed=0)
    data = [list(range(4, 44)), list(range(5, 25)), list(range(6, 16))]
    batch = collate(data)
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    for row, original in enumerate(data):
        length = int(batch["attention_mask"][row].sum())
        inputs = batch["input_ids"][row, :length].tolist()
        assert batch["input_ids"][row, length:].eq(PAD).all()
        labels = [t for t in batch["labels"][row].tolist()]
        target_length = len(labels) - labels.count(N)
        assert labels[target_length:] == [N] * (len(labels) - target_length)  # only padding is ignored
        targets = labels[:target_length]
        assert inputs[-1] == EOS and targets[-1] == EOS
        num_noise, num_spans = span_counts(len(original))
        used = SENTINELS[:num_spans]
        assert [t for t in inputs if t in SENTINELS] == used  # sentinels in order, once each
        assert [t for t in targets if t in SENTINELS] == used
        assert len(targets) == num_noise + num_spans + 1
        # put each span back in place of its sentinel: the original text comes back
        spans, current = {}, None
        for t in targets[:-1]:
            if t in SENTINELS:
                current = t
                spans[t] = []
            else:
                spans[current].append(t)
        rebuilt = [x for t in inputs[:-1] for x in (spans[t] if t in SENTINELS else [t])]
        assert rebuilt == original


def test_span_collator_sentinel_limit():
    collate = SpanCorruptionCollator(sentinel_ids=[63, 62], eos_id=EOS)
    assert span_counts(40) == (6, 2)
    collate([list(range(4, 44))])  # two spans, two sentinels: fine
    assert span_counts(100) == (15, 5)
    with pytest.raises(ValueError, match="5 noise spans but only 2 sentinel_ids"):
        collate([list(range(100))])
    with pytest.raises(ValueError, match="sentinel_ids is empty"):
        SpanCorruptionCollator(sentinel_ids=[])
    with pytest.raises(ValueError, match="noise_density"):
        SpanCorruptionCollator(sentinel_ids=[63], noise_density=1.5)


def test_span_collator_is_deterministic_with_a_seed():
    data = [list(range(4, 60))] * 4
    a = SpanCorruptionCollator(sentinel_ids=SENTINELS, eos_id=EOS, seed=5)
    b = SpanCorruptionCollator(sentinel_ids=SENTINELS, eos_id=EOS, seed=5)
    first, second = a(data), a(data)
    assert torch.equal(first["input_ids"], b(data)["input_ids"])
    assert torch.equal(second["labels"], b(data)["labels"])
    assert not torch.equal(first["input_ids"], second["input_ids"])


def test_span_collator_end_to_end():
    collate = SpanCorruptionCollator(sentinel_ids=SENTINELS, pad_id=PAD, eos_id=EOS)
    batch = collate([list(range(4, 44)), list(range(5, 25))])
    finite_loss(Seq2SeqLM(tiny_config()), batch)


# ---- BERT masking ------------------------------------------------------------------------------------------


def test_masking_hand_worked_all_to_mask():
    collate = MaskingCollator(mask_id=MASK, vocab_size=64, pad_id=PAD, special_ids=[BOS, EOS],
                              mlm_probability=1.0, mask_replace_prob=1.0, random_replace_prob=0.0)
    batch = collate([[BOS, 10, 11, EOS], [BOS, 12, EOS]])
    assert batch["input_ids"].tolist() == [[2, 3, 3, 1], [2, 3, 1, 0]]
    assert batch["labels"].tolist() == [[N, 10, 11, N], [N, 12, N, N]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]
    assert "token_type_ids" not in batch


def test_masking_hand_worked_keep_and_random():
    keep = MaskingCollator(mask_id=MASK, vocab_size=64, special_ids=[BOS, EOS], mlm_probability=1.0,
                           mask_replace_prob=0.0, random_replace_prob=0.0, token_types=True)
    batch = keep([[BOS, 10, 11, EOS]])
    assert batch["input_ids"].tolist() == [[2, 10, 11, 1]]
    assert batch["labels"].tolist() == [[N, 10, 11, N]]
    assert batch["token_type_ids"].tolist() == [[0, 0, 0, 0]]

    specials = [PAD, EOS, BOS, MASK]
    rand = MaskingCollator(mask_id=MASK, vocab_size=8, special_ids=[BOS, EOS], mlm_probability=1.0,
                           mask_replace_prob=0.0, random_replace_prob=1.0)
    for _ in range(50):
        ids = rand([[BOS, 4, 5, 6, 7, EOS]])["input_ids"][0].tolist()
        assert ids[0] == BOS and ids[-1] == EOS
        assert all(4 <= t < 8 for t in ids[1:-1])  # random draws avoid every special id
        assert not set(ids[1:-1]) & set(specials)


def test_masking_chooses_an_exact_count_per_row():
    collate = MaskingCollator(mask_id=MASK, vocab_size=64, special_ids=[BOS, EOS], seed=0)
    rows = [[BOS] + [10] * 40 + [EOS], [BOS, 11, 12, 13, EOS], [BOS, EOS]]
    for _ in range(20):
        labels = collate(rows)["labels"]
        chosen = (labels != N).sum(dim=1).tolist()
        assert chosen == [6, 1, 0]  # round(0.15 * 40) = 6; round(0.45) = 0 -> at least 1; no candidates -> 0


def test_masking_never_touches_specials():
    specials = [BOS, EOS, 4, 5]
    collate = MaskingCollator(mask_id=MASK, vocab_size=64, special_ids=specials, mlm_probability=0.5, seed=0)
    g = torch.Generator().manual_seed(1)
    for _ in range(50):
        data = [torch.randint(0, 64, (int(torch.randint(5, 30, (1,), generator=g)),), generator=g) for _ in range(8)]
        batch = collate(data)
        original, _ = pad_sequences([d.tolist() for d in data], PAD)
        is_special = torch.isin(original, torch.tensor(specials + [PAD, MASK]))
        assert (batch["labels"][is_special] == N).all()
        assert torch.equal(batch["input_ids"][is_special], original[is_special])
        changed = batch["input_ids"] != original
        assert not torch.isin(batch["input_ids"][changed], torch.tensor(specials + [PAD])).any()


def test_masking_rate_and_80_10_10_statistics():
    collate = MaskingCollator(mask_id=MASK, vocab_size=1000, special_ids=[BOS, EOS], seed=0)
    g = torch.Generator().manual_seed(2)
    chosen = masked = randomized = kept = positions = 0
    hits = torch.zeros(128)
    for _ in range(40):
        original = torch.randint(10, 1000, (32, 128), generator=g)
        batch = collate(list(original))
        picked = batch["labels"] != N
        assert torch.equal(batch["labels"][picked], original[picked])
        ids = batch["input_ids"][picked]
        chosen += int(picked.sum())
        positions += original.numel()
        masked += int((ids == MASK).sum())
        kept += int((ids == original[picked]).sum())
        randomized += int(((ids != MASK) & (ids != original[picked])).sum())
        hits += picked.float().sum(dim=0)
    assert abs(chosen / positions - 0.15) < 0.005
    assert abs(masked / chosen - 0.8) < 0.015
    assert abs(randomized / chosen - 0.1) < 0.01
    assert abs(kept / chosen - 0.1) < 0.01
    rate = hits / (40 * 32)
    assert rate.min() > 0.09 and rate.max() < 0.21  # every position is as likely to be chosen


def test_masking_is_deterministic_with_a_seed():
    data = [list(range(10, 60))] * 4
    a = MaskingCollator(mask_id=MASK, vocab_size=64, seed=4)
    b = MaskingCollator(mask_id=MASK, vocab_size=64, seed=4)
    first, second = a(data), a(data)
    assert torch.equal(first["input_ids"], b(data)["input_ids"])
    assert torch.equal(second["labels"], b(data)["labels"])
    assert not torch.equal(first["labels"], second["labels"])


def test_masking_end_to_end():
    data = [[BOS] + list(range(10, 30)) + [EOS], [BOS] + list(range(30, 40)) + [EOS]]
    collate = MaskingCollator(mask_id=MASK, vocab_size=64, special_ids=[BOS, EOS])
    finite_loss(MaskedLM(tiny_config()), collate(data))
    typed = MaskingCollator(mask_id=MASK, vocab_size=64, special_ids=[BOS, EOS], token_types=True)
    finite_loss(MaskedLM(tiny_config(type_vocab_size=2)), typed(data))


# ---- input -> output ---------------------------------------------------------------------------------------


def test_seq2seq_hand_worked():
    collate = Seq2SeqCollator(pad_id=PAD, eos_id=EOS, append_eos=True)
    batch = collate([([5, 6, 7], [8]), {"input_ids": torch.tensor([9]), "labels": [10, 11, EOS]}])
    assert batch["input_ids"].tolist() == [[5, 6, 7], [9, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[8, 1, N], [10, 11, 1]]  # eos added once, padding ignored
    plain = Seq2SeqCollator()([{"inputs": [5], "targets": [6, 7]}])
    assert plain["labels"].tolist() == [[6, 7]]
    with pytest.raises(ValueError, match="pair"):
        Seq2SeqCollator()([[5, 6, 7]])
    with pytest.raises(ValueError, match="empty"):
        Seq2SeqCollator()([([5], [])])
    with pytest.raises(ValueError, match="append_eos needs eos_id"):
        Seq2SeqCollator(append_eos=True)


def test_seq2seq_end_to_end():
    lm = Seq2SeqLM(tiny_config())
    batch = Seq2SeqCollator(eos_id=EOS, append_eos=True)([(list(range(4, 14)), [20, 21]), ([30, 31], [40])])
    _, targets = lm.logits_and_targets(batch)
    assert targets.tolist() == [[20, 21, 1], [40, 1, N]]
    finite_loss(lm, batch)


# ---- building from a tokenizer, workers, state ---------------------------------------------------------------


def fake_tokenizer(**overrides):
    values = dict(pad_id=PAD, eos_id=EOS, bos_id=BOS, unk_id=4, mask_id=MASK, sentinel_ids=SENTINELS[:4], vocab_size=64)
    values.update(overrides)
    return SimpleNamespace(**values)


def test_from_tokenizer():
    tok = fake_tokenizer()
    assert CausalCollator.from_tokenizer(tok).pad_id == PAD
    span = SpanCorruptionCollator.from_tokenizer(tok, noise_density=0.3)
    assert (span.sentinel_ids, span.eos_id, span.pad_id, span.noise_density) == (SENTINELS[:4], EOS, PAD, 0.3)
    masking = MaskingCollator.from_tokenizer(tok)
    assert (masking.mask_id, masking.vocab_size) == (MASK, 64)
    assert masking.special_ids == sorted([PAD, EOS, BOS, MASK] + SENTINELS[:4])  # unk stays maskable
    assert special_ids_of(SimpleNamespace(special_ids=[7, 0])) == [0, 7]
    assert Seq2SeqCollator.from_tokenizer(tok, append_eos=True).eos_id == EOS
    assert PrefixLMCollator.from_tokenizer(tok, pad_id=9).pad_id == 9  # keywords win
    # SentencePiece reports a missing id as -1: treated as absent, so the default applies
    assert CausalCollator.from_tokenizer(fake_tokenizer(pad_id=-1)).pad_id == 0
    # vocab_size as a method (SentencePieceProcessor style)
    assert MaskingCollator.from_tokenizer(fake_tokenizer(vocab_size=lambda: 80)).vocab_size == 80
    with pytest.raises(ValueError, match="no mask_id; pass mask_id=..."):
        MaskingCollator.from_tokenizer(fake_tokenizer(mask_id=None))


def test_state_dict_and_pickle_resume_the_stream():
    collate = MaskingCollator(mask_id=MASK, vocab_size=64, seed=0)
    data = [list(range(10, 60))] * 2
    collate(data)
    state = collate.state_dict()
    copy = pickle.loads(pickle.dumps(collate))
    expected = collate(data)
    assert torch.equal(copy(data)["input_ids"], expected["input_ids"])
    fresh = MaskingCollator(mask_id=MASK, vocab_size=64, seed=123)
    fresh.load_state_dict(state)
    assert torch.equal(fresh(data)["labels"], expected["labels"])


def test_dataloader_workers_draw_different_but_reproducible_streams():
    collate = SpanCorruptionCollator(sentinel_ids=SENTINELS, eos_id=EOS, seed=0)
    data = [list(range(4, 104))] * 4

    def run():
        torch.manual_seed(11)
        loader = torch.utils.data.DataLoader(data, batch_size=1, num_workers=2, collate_fn=collate)
        return [b["input_ids"] for b in loader]

    first = run()
    assert not torch.equal(first[0], first[1])  # batches 0 and 1 come from different workers
    assert all(torch.equal(x, y) for x, y in zip(first, run()))


def test_validation_draws_are_keyed_by_the_batch_not_by_what_ran_before():
    """Validation's copy masks a batch the same way on every pass, whatever the training collator
    drew before the copy was made, and never advances the training collator's stream."""
    from llm_modules.data.collate_rng import batch_key, validation_collate

    def masking():
        return MaskingCollator(mask_id=3, vocab_size=64, special_ids=[0, 1, 2], seed=5)

    batches = [[list(range(4, 36)), list(range(10, 40))], [list(range(20, 52)), list(range(8, 30))]]
    early, late = masking(), masking()
    for _ in range(3):
        late(batches[0])  # training went on before this copy was made
    training_state = late.state_dict()["generator"].clone()
    first, second = validation_collate(early), validation_collate(late)
    passes = [[first(b)["input_ids"] for b in batches] for _ in range(2)]
    passes.append([second(b)["input_ids"] for b in reversed(batches)][::-1])
    for other in passes[1:]:
        assert all(torch.equal(a, b) for a, b in zip(passes[0], other))
    assert torch.equal(late.state_dict()["generator"], training_state)
    assert (passes[0][0] == 3).any()  # it does mask
    assert batch_key(batches[0]) != batch_key(batches[1])
    assert batch_key(batches[0]) == batch_key([list(row) for row in batches[0]])
    other_seed = validation_collate(MaskingCollator(mask_id=3, vocab_size=64, special_ids=[0, 1, 2], seed=6))
    assert not torch.equal(other_seed(batches[0])["input_ids"], passes[0][0])
