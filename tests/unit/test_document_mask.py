"""Packed documents: with ``document_ids`` each document in a block gets exactly the outputs it gets
alone, on every built-in backend and position encoding; the data module's ``document_mask`` puts
the boundaries in the batch; next-token targets never cross a boundary; training with it runs.
"""

from __future__ import annotations

import lightning as L
import pytest
import torch

from _core_helpers import VOCAB, build, builtin_names, same_weights, tiny_config
from llm_modules import CausalLM
from llm_modules.data.datamodule import TextDataModule
from llm_modules.data.collators import MaskingCollator
from llm_modules.data.packing import WithDocumentIds, document_ids, stack_blocks
from llm_modules.models.base import IGNORE_INDEX
from llm_modules.nn.documents import restart_positions
from llm_modules.nn.masks import AttentionMask
from llm_modules.registry import ConfigError

# Row 0 packs three documents into 14 tokens; row 1 two documents and three padding tokens.
LENGTHS = [[5, 3, 6], [4, 7]]
T = 14


def packed_batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.zeros(2, T, dtype=torch.long)
    docs = torch.zeros(2, T, dtype=torch.long)
    mask = torch.zeros(2, T, dtype=torch.long)
    pieces = []
    for row, lengths in enumerate(LENGTHS):
        start = 0
        for d, n in enumerate(lengths):
            tokens = torch.randint(2, VOCAB, (n,), generator=g)
            ids[row, start:start + n], docs[row, start:start + n], mask[row, start:start + n] = tokens, d, 1
            pieces.append((row, start, tokens))
            start += n
        docs[row, start:] = len(lengths) - 1  # padding continues the last document's run
    return ids, mask, docs, pieces


def test_mask_is_block_diagonal_and_causal_inside_each_document():
    docs = torch.tensor([[0, 0, 1, 1, 1, 2]])
    dense = AttentionMask(6, 6, causal=True, documents=docs).dense()[0, 0]
    expected = torch.zeros(6, 6, dtype=torch.bool)
    for lo, hi in ((0, 2), (2, 5), (5, 6)):
        expected[lo:hi, lo:hi] = torch.ones(hi - lo, hi - lo).tril().bool()
    assert torch.equal(dense, expected)
    both_ways = AttentionMask(6, 6, documents=docs)
    assert not both_ways.is_empty and not AttentionMask(6, 6, causal=True, documents=docs).is_plain_causal
    assert both_ways.dense()[0, 0].sum() == 2 * 2 + 3 * 3 + 1


def test_positions_restart_at_each_document():
    docs = torch.tensor([[0, 0, 0, 1, 1, 2, 2, 2], [0, 1, 1, 1, 1, 1, 1, 1]])
    plain = torch.arange(8).expand(2, 8)
    assert restart_positions(plain, docs).tolist() == [[0, 1, 2, 0, 1, 0, 1, 2], [0, 0, 1, 2, 3, 4, 5, 6]]
    left_padded = torch.tensor([[0, 0, 0, 1, 2, 3, 4, 5]])  # positions_from a left-padded row
    assert restart_positions(left_padded, torch.tensor([[0, 0, 0, 0, 0, 1, 1, 1]])).tolist() == [
        [0, 0, 0, 1, 2, 0, 1, 2]]


# flex runs unfused on CPU (about 2 s a case), so it covers an absolute and a bias encoding only
CASES = [(p, a) for p in builtin_names("position") for a in ("eager", "sdpa")]
CASES += [("learned", "flex"), ("alibi", "flex")]


@pytest.mark.parametrize("position, attention", CASES)
@pytest.mark.parametrize("kind", ["CausalLM", "MaskedLM"])
def test_each_packed_document_gets_its_logits_alone(kind, position, attention):
    reference = build(kind, position=position, n_kv_heads=2)
    lm = reference if attention == "eager" else same_weights(reference, kind, position=position, n_kv_heads=2,
                                                              attention=attention)
    ids, mask, docs, pieces = packed_batch()
    with torch.no_grad():  # flex has no CPU backward in this torch; the forward is what is compared
        packed = lm(ids, mask, document_ids=docs)
        for row, start, tokens in pieces:
            alone = lm(tokens.unsqueeze(0))
            torch.testing.assert_close(packed[row, start:start + len(tokens)], alone[0], atol=1e-5, rtol=1e-5)


def test_without_document_ids_documents_do_see_each_other():
    lm = build("CausalLM", position="rope")
    ids, mask, docs, pieces = packed_batch()
    with torch.no_grad():
        plain = lm(ids, mask)
        row, start, tokens = pieces[1]  # the second document of row 0
        alone = lm(tokens.unsqueeze(0))
    assert not torch.allclose(plain[row, start:start + len(tokens)], alone[0], atol=1e-3)


def test_sdpa_gradients_with_documents_match_eager():
    eager = build("CausalLM", position="alibi", sliding_window=4)
    sdpa = same_weights(eager, "CausalLM", position="alibi", sliding_window=4, attention="sdpa")
    ids, mask, docs, _ = packed_batch(1)
    grads = []
    for lm in (eager, sdpa):
        lm.zero_grad()
        lm.compute_loss({"input_ids": ids, "attention_mask": mask, "document_ids": docs})["loss"].backward()
        grads.append(lm.model.stack.layers[0].attn.q.weight.grad.clone())
    torch.testing.assert_close(grads[1], grads[0], atol=1e-5, rtol=1e-4)


def test_targets_stop_at_document_boundaries():
    lm = build("CausalLM")
    ids = torch.tensor([[5, 6, 3, 7, 8, 9, 3, 10]])  # 3 = EOS closing each document
    docs = document_ids(ids, eos_id=3)
    assert docs.tolist() == [[0, 0, 0, 1, 1, 1, 1, 2]]
    _, targets = lm.logits_and_targets({"input_ids": ids, "document_ids": docs})
    # the EOS of document 0 would predict the first token of document 1: dropped; EOS itself is a target
    assert targets.tolist() == [[6, 3, IGNORE_INDEX, 8, 9, 3, IGNORE_INDEX, IGNORE_INDEX]]
    _, plain = lm.logits_and_targets({"input_ids": ids})
    assert plain.tolist() == [[6, 3, 7, 8, 9, 3, 10, IGNORE_INDEX]]


def test_document_ids_are_refused_with_a_prefix_or_a_cache():
    lm = build("PrefixLM")
    ids, mask, docs, _ = packed_batch()
    with pytest.raises(ValueError, match="prefix_lengths: a prefix belongs to a row"):
        lm(ids, mask, torch.tensor([2, 3]), docs)
    with pytest.raises(ValueError, match="must match input_ids"):
        build("CausalLM")(ids, mask, docs[:, :5])


# ---- the data module --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def document_data(corpus, cache):
    dm = TextDataModule(paths=[str(corpus)], cache_dir=str(cache), vocab_size=320, num_sentinels=8, seq_len=32,
                        batch_size=4, val_fraction=0.2, document_mask=True)
    dm.setup("fit")
    return dm


def test_data_module_batches_carry_the_document_boundaries(document_data):
    eos = document_data.tokenizer.eos_id
    boundaries = 0
    for batch in document_data.train_dataloader():
        assert set(batch) == {"input_ids", "document_ids"}
        ids, docs = batch["input_ids"], batch["document_ids"]
        assert docs.shape == ids.shape and (docs[:, 0] == 0).all()
        after_eos = ids[:, :-1] == eos
        steps = torch.diff(docs, dim=1)
        assert torch.equal(steps == 1, after_eos) and ((steps == 0) | (steps == 1)).all()
        boundaries += int(steps.sum())
    assert boundaries > 0
    assert "document_ids" in next(iter(document_data.val_dataloader()))


def test_document_ids_with_the_masked_lm_collator_and_a_refused_one():
    blocks = [torch.tensor([5, 6, 3, 7, 8, 3]), torch.tensor([9, 3, 10, 11, 12, 13])]
    masked = WithDocumentIds(MaskingCollator(mask_id=4, vocab_size=20, special_ids=[3], seed=0), eos_id=3)(blocks)
    assert masked["document_ids"].tolist() == [[0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 1, 1]]
    assert WithDocumentIds(stack_blocks, 3)(blocks)["input_ids"].shape == (2, 6)
    shorter = WithDocumentIds(lambda b: {"input_ids": torch.stack(b)[:, :4]}, 3)
    with pytest.raises(ConfigError, match="data.document_mask needs a collator that keeps the packed blocks"):
        shorter(blocks)


def test_training_with_document_masks_runs(document_data, tmp_path):
    torch.manual_seed(0)
    lm = CausalLM(tiny_config(vocab_size=document_data.vocab_size, attention="sdpa", position="rope"))
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=4, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=1,
                        num_sanity_val_steps=0, val_check_interval=4, default_root_dir=tmp_path)
    trainer.fit(lm, datamodule=document_data)
    assert trainer.global_step == 4
    assert torch.isfinite(trainer.callback_metrics["val/loss"])
