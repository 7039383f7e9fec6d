"""What each LM kind may see: causality, the prefix-LM prefix, padding and cross-attention.

These are behavioural checks on whole models: perturb one token and see which outputs move.
Every position encoding is covered, because each one touches attention in a different place
(embeddings, rotated q/k, an additive bias) and each can leak the future or the padding in its own way.
"""

from __future__ import annotations

import pytest
import torch

from _core_helpers import KINDS, PAD_ID, POSITIONS, build, run, training_batch

ATOL = 1e-6
EXTRAS = {
    "plain": {},
    "window": {"sliding_window": 3},
    "stride": {"sparse_stride": 4},
}


def _ids(batch=2, length=12, seed=0):
    return torch.randint(2, 50, (batch, length), generator=torch.Generator().manual_seed(seed))


def _changed(ids, t, batch_rows=None):
    """ids with token t replaced (by a different id) in every row, or only in ``batch_rows``."""
    out = ids.clone()
    rows = range(ids.shape[0]) if batch_rows is None else batch_rows
    for r in rows:
        out[r, t] = 2 + (int(ids[r, t]) - 2 + 17) % 48
    return out


# ---- causality ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
@pytest.mark.parametrize("extra", sorted(EXTRAS) + ["masked"])
@pytest.mark.parametrize("position", sorted(POSITIONS))
@pytest.mark.parametrize("kind", ["CausalLM", "PrefixLM", "Seq2SeqLM"])
def test_changing_token_t_never_changes_earlier_outputs(kind, position, extra, attention):
    """CausalLM, PrefixLM without a prefix, and the Seq2SeqLM decoder: outputs before t ignore token t.
    ``masked`` passes an attention mask (right padding in one row), which takes the dense-mask path."""
    lm = build(kind, position=POSITIONS[position], attention=attention, **EXTRAS.get(extra, {}))
    ids, t = _ids(), 6
    mask = None
    if extra == "masked":
        mask = torch.ones_like(ids)
        mask[1, -2:] = 0
    enc = _ids(seed=5)  # Seq2SeqLM: a fixed encoder input, the decoder input is perturbed
    with torch.no_grad():
        if kind == "Seq2SeqLM":
            before = run(lm, enc, decoder_ids=ids, decoder_mask=mask)
            after = run(lm, enc, decoder_ids=_changed(ids, t), decoder_mask=mask)
        else:
            before, after = run(lm, ids, mask), run(lm, _changed(ids, t), mask)
    torch.testing.assert_close(after[:, :t], before[:, :t], atol=ATOL, rtol=0)
    assert (after[:, t] - before[:, t]).abs().max() > 1e-4  # the change itself is seen


@pytest.mark.parametrize("position", sorted(POSITIONS))
def test_masked_lm_is_bidirectional(position):
    # init_std 0.2: token embeddings comparable to the fixed sinusoidal table, so a token's influence is large
    lm = build("MaskedLM", position=POSITIONS[position], init_std=0.2)
    ids = _ids()
    with torch.no_grad():
        before, after = run(lm, ids), run(lm, _changed(ids, 11))
    assert (after[:, 0] - before[:, 0]).abs().max() > 1e-4


# ---- prefix LM --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
@pytest.mark.parametrize("position", sorted(POSITIONS))
def test_prefix_is_bidirectional_and_the_rest_causal(position, attention):
    lm = build("PrefixLM", position=POSITIONS[position], attention=attention, init_std=0.2)
    ids = _ids()
    prefix = torch.tensor([6, 6])
    with torch.no_grad():
        base = run(lm, ids, prefix_lengths=prefix)
        inside = run(lm, _changed(ids, 4), prefix_lengths=prefix)  # a later prefix token ...
        after = run(lm, _changed(ids, 8), prefix_lengths=prefix)  # a token after the prefix ...
    # ... changes the outputs at earlier prefix positions
    assert (inside[:, 1] - base[:, 1]).abs().max() > 1e-4
    assert (inside[:, 0] - base[:, 0]).abs().max() > 1e-4
    # ... is seen by nothing before it, prefix included
    torch.testing.assert_close(after[:, :8], base[:, :8], atol=ATOL, rtol=0)
    assert (after[:, 8] - base[:, 8]).abs().max() > 1e-4
    # the boundary: the last prefix token (5) is seen by position 0, the first token after it (6) is not
    with torch.no_grad():
        last = run(lm, _changed(ids, 5), prefix_lengths=prefix)
        first_after = run(lm, _changed(ids, 6), prefix_lengths=prefix)
    assert (last[:, 0] - base[:, 0]).abs().max() > 1e-4
    torch.testing.assert_close(first_after[:, :6], base[:, :6], atol=ATOL, rtol=0)


def test_prefix_lengths_are_per_example():
    lm = build("PrefixLM", position="rope")
    ids = _ids()
    prefix = torch.tensor([2, 7])
    with torch.no_grad():
        base = run(lm, ids, prefix_lengths=prefix)
        changed = run(lm, _changed(ids, 5), prefix_lengths=prefix)
    torch.testing.assert_close(changed[0, :5], base[0, :5], atol=ATOL, rtol=0)  # row 0: 5 is after its prefix
    assert (changed[1, :5] - base[1, :5]).abs().max() > 1e-4  # row 1: 5 is inside its prefix
    # without prefix_lengths the prefix model is a plain causal decoder
    with torch.no_grad():
        torch.testing.assert_close(run(lm, _changed(ids, 5))[:, :5], run(lm, ids)[:, :5], atol=ATOL, rtol=0)


def test_prefix_lm_targets_start_after_the_prefix():
    """Tokens [t0..t7] with prefix 3: logit i predicts t(i+1), kept only when t(i+1) is after the
    prefix (i >= 2); left padding shifts the row but not the prefix, which counts real tokens."""
    lm = build("PrefixLM")
    ids = torch.arange(10, 18).unsqueeze(0)
    _, targets = lm.logits_and_targets({"input_ids": ids, "prefix_lengths": torch.tensor([3])})
    assert targets[0].tolist() == [-100, -100, 13, 14, 15, 16, 17, -100]
    padded = torch.cat([torch.zeros(1, 2, dtype=torch.long), ids], dim=1)
    mask = (padded != 0).long()
    batch = {"input_ids": padded, "attention_mask": mask, "prefix_lengths": torch.tensor([3])}
    _, targets = lm.logits_and_targets(batch)
    assert targets[0].tolist() == [-100, -100, -100, -100, 13, 14, 15, 16, 17, -100]
    _, causal = build("CausalLM").logits_and_targets({"input_ids": padded, "attention_mask": mask})
    assert causal[0].tolist() == [-100, -100, 11, 12, 13, 14, 15, 16, 17, -100]


# ---- padding ----------------------------------------------------------------------------------------------------------


def _pad_rows(rows, side):
    """Rows of different lengths padded to one width on ``side``; returns the padded ids, the
    attention mask and, per row, the slice that holds its real tokens."""
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), PAD_ID, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    slices = []
    for i, row in enumerate(rows):
        start = width - len(row) if side == "left" else 0
        out[i, start : start + len(row)], mask[i, start : start + len(row)] = row, 1
        slices.append(slice(start, start + len(row)))
    return out, mask, slices


def _padding_case(kind, side, **overrides):
    """Rows of lengths 10 and 7 (decoder: 6 and 9) run alone, unpadded, must give the same outputs
    as in one padded batch."""
    lm = build(kind, **overrides)
    ids = _ids(length=10)
    enc_rows = [ids[0], ids[1, :7]]
    dec = _ids(length=9, seed=3)
    dec_rows = [dec[0, :6], dec[1]]
    prefix = [3, 5]
    padded, mask, slices = _pad_rows(enc_rows, side)
    dec_padded, dec_mask, dec_slices = _pad_rows(dec_rows, side)
    with torch.no_grad():
        if kind == "Seq2SeqLM":
            out = run(lm, padded, mask, decoder_ids=dec_padded, decoder_mask=dec_mask)
            refs = [run(lm, e[None], decoder_ids=d[None])[0] for e, d in zip(enc_rows, dec_rows)]
            slices = dec_slices
        else:
            out = run(lm, padded, mask, prefix_lengths=torch.tensor(prefix))
            refs = [run(lm, e[None], prefix_lengths=torch.tensor([p]))[0] for e, p in zip(enc_rows, prefix)]
    for r, s in enumerate(slices):
        torch.testing.assert_close(out[r, s], refs[r], atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("position", sorted(POSITIONS))
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_padding_never_changes_real_outputs(kind, position, side):
    """Left and right padding of rows of different lengths; PrefixLM prefix lengths count real tokens."""
    _padding_case(kind, side, position=POSITIONS[position], attention="sdpa")


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("extra", ["window", "stride"])
@pytest.mark.parametrize("position", ["alibi", "rope", "t5"])
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_padding_with_sparse_masks(kind, position, extra, side):
    """Window distances and stride blocks are measured over real tokens, so padding does not move them."""
    _padding_case(kind, side, position=position, attention="eager", **EXTRAS[extra])


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_padding_does_not_change_the_loss(kind):
    """Rows of different lengths, each alone and then padded together on either side, give the same
    token-averaged loss: no loss term is taken at padding (in particular not 'the last left pad
    predicts the first real token'), and PrefixLM's prefix is counted over real tokens."""
    lm = build(kind, position="rope")
    full = training_batch(kind, batch=2, length=10)
    lengths = [10, 6]
    rows = []
    for r, n in enumerate(lengths):
        row = {key: value[r : r + 1, :n] if value.dim() == 2 else value[r : r + 1] for key, value in full.items()}
        rows.append(row)
    outs = [lm.compute_loss(row) for row in rows]
    reference = sum(o["lm_loss"] * o["tokens"] for o in outs) / sum(o["tokens"] for o in outs)
    for side in ("left", "right"):
        padded, mask, _ = _pad_rows([row["input_ids"][0] for row in rows], side)
        batch = dict(full, input_ids=padded, attention_mask=mask)
        if kind == "MaskedLM":
            labels, _, _ = _pad_rows([row["labels"][0] for row in rows], side)
            batch["labels"] = labels.masked_fill(mask == 0, -100)
        elif kind == "Seq2SeqLM":  # only the encoder is padded on `side`; targets end with -100 padding
            labels, label_mask, _ = _pad_rows([row["labels"][0] for row in rows], "right")
            batch["labels"] = labels.masked_fill(label_mask == 0, -100)
        out = lm.compute_loss(batch)
        assert int(out["tokens"]) == int(sum(o["tokens"] for o in outs)), side
        assert out["lm_loss"].item() == pytest.approx(reference.item(), rel=1e-5), side


# ---- encoder-decoder ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("attention", ["eager", "sdpa", "flex"])
@pytest.mark.parametrize("position", ["t5", "rope", "learned"])
def test_cross_attention_respects_encoder_padding(position, attention):
    lm = build("Seq2SeqLM", position=position, attention=attention)
    enc, dec = _ids(length=10), _ids(length=7, seed=4)
    mask = torch.ones_like(enc)
    mask[:, 7:] = 0  # the last three encoder tokens are padding
    with torch.no_grad():
        base = run(lm, enc, mask, decoder_ids=dec)
        hidden = _changed(_changed(enc, 8), 9)
        torch.testing.assert_close(run(lm, hidden, mask, decoder_ids=dec), base, atol=ATOL, rtol=0)
        visible = run(lm, _changed(enc, 5), mask, decoder_ids=dec)
    assert (visible - base).abs().max() > 1e-4  # a real encoder token reaches every decoder position
    assert (visible[:, 0] - base[:, 0]).abs().max() > 1e-4


# ---- the public inputs: embedded tokens, and what one self-attention mask is built from --------------------------


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_inputs_embeds_enter_the_stack_as_the_embedded_ids_do(kind):
    """``inputs_embeds`` (decoder_inputs_embeds for a decoder over an encoder) is the model's public
    input for vectors made outside it: the embedded ids give exactly the logits of the ids."""
    net = build(kind).model
    ids, mask = _ids(), torch.ones(2, 12, dtype=torch.long)
    if kind == "Seq2SeqLM":
        memory = net.encode(inputs_embeds=net.embed(ids), attention_mask=mask)
        torch.testing.assert_close(memory, net.encode(ids, mask), atol=0, rtol=0)
        got = net.decode(None, memory, mask, decoder_inputs_embeds=net.embed(ids[:, :4]))
        torch.testing.assert_close(got, net(ids, mask, ids[:, :4]), atol=0, rtol=0)
        return
    torch.testing.assert_close(net(inputs_embeds=net.embed(ids), attention_mask=mask), net(ids, mask), atol=0, rtol=0)
    with pytest.raises(ValueError, match="either input_ids or inputs_embeds"):
        net(ids, inputs_embeds=net.embed(ids))
    with pytest.raises(ValueError, match="either input_ids or inputs_embeds"):
        net()


def test_mask_inputs_keep_padding_kind_decoding_and_documents_apart():
    from llm_modules.nn.kv_cache import KVCache
    from llm_modules.nn.mask_inputs import MaskInputs, self_attention_mask

    cfg = build("CausalLM").model.config
    cache = KVCache()
    cache.length = 3
    padding = torch.tensor([[0, 1, 1, 1, 1], [1, 1, 1, 1, 1]])
    x = torch.zeros(2, 2, cfg.d_model)
    # decoding: the new tokens' queries start after the cache, the keys span both, positions count real tokens
    mask, positions = self_attention_mask(cfg, MaskInputs(True, padding, cache=cache), x)
    assert (mask.q_len, mask.k_len, mask.q_offset) == (2, 5, 3)
    assert positions.tolist() == [[2, 3], [3, 4]]
    with pytest.raises(ValueError, match="with 3 cached and 2 new it must cover 5"):
        self_attention_mask(cfg, MaskInputs(True, padding[:, 1:], cache=cache), x)
    # the kind: a prefix decoder's prefix, and an encoder's two-way attention
    mask, _ = self_attention_mask(cfg, MaskInputs(True, prefix_lengths=torch.tensor([2, 1])), x)
    assert mask.prefix_lengths.tolist() == [2, 1] and mask.causal
    assert self_attention_mask(cfg, MaskInputs(False), x)[0].is_empty
    # training on packed rows: documents restart positions; never with a cache or a prefix
    mask, positions = self_attention_mask(cfg, MaskInputs(True, document_ids=torch.tensor([[0, 1], [0, 0]])), x)
    assert positions.tolist() == [[0, 0], [0, 1]] and mask.documents is not None
    with pytest.raises(ValueError, match="a KV cache"):
        MaskInputs(True, cache=cache, document_ids=torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="prefix_lengths: a prefix belongs to a row"):
        MaskInputs(True, prefix_lengths=torch.tensor([1, 1]), document_ids=torch.zeros(2, 2, dtype=torch.long))
