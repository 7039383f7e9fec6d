"""Generation against transformers' ``generate``: the same ids for tiny random LLaMA, GPT-2 and T5
models imported with from_hf, for greedy and beam search (length penalties, early stopping) on
batched, left-padded prompts, and for seeded sampling with every logits processor.

The stop tokens are chosen among the tokens each model actually produces, so rows end at different
steps and the stopping and padding paths run (asserted, not hoped for).
"""

from __future__ import annotations

import pytest
import torch

import transformers  # noqa: E402  (a dev dependency: the oracle these tests compare against)

import llm_modules  # noqa: E402
from llm_modules.generation import generate  # noqa: E402

from hf_helpers import randomize_  # noqa: E402

VOCAB = 97
PAD = 1  # not 0: transformers' beam search fills finished rows with EOS when pad_token_id is 0
NEW = 12


def _llama():
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": 500.0},
    ))


def _gpt2():
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=64, n_layer=2, n_head=4))


def _t5():
    return transformers.T5ForConditionalGeneration(transformers.T5Config(
        vocab_size=VOCAB, d_model=32, d_kv=12, d_ff=48, num_layers=2, num_decoder_layers=2, num_heads=4,
        relative_attention_num_buckets=8, relative_attention_max_distance=12, dropout_rate=0.0,
        pad_token_id=0, decoder_start_token_id=0,  # T5: the decoder starts from the pad token
    ))


BUILDERS = {"llama": _llama, "gpt2": _gpt2, "t5": _t5}


def prompts(seq2seq: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Three prompts of lengths 7, 4, 2: left-padded for decoders, right-padded for an encoder."""
    ids = torch.randint(3, VOCAB, (3, 7), generator=torch.Generator().manual_seed(1))
    lengths = torch.tensor([7, 4, 2]).unsqueeze(1)
    columns = torch.arange(7).unsqueeze(0)
    mask = (columns < lengths if seq2seq else columns >= 7 - lengths).long()
    return ids.masked_fill(mask == 0, PAD), mask


@pytest.fixture(scope="module", params=list(BUILDERS))
def pair(request, tmp_path_factory):
    """(transformers model, our module, prompt ids, mask, four stop ids the model really emits)."""
    torch.manual_seed(0)
    hf = randomize_(BUILDERS[request.param]()).eval()
    path = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(path)
    ours = llm_modules.from_hf(path)
    ids, mask = prompts(request.param == "t5")
    free = generate(ours, ids, mask, max_new_tokens=NEW, num_beams=4, eos_token_id=[])
    new = free[:, -NEW:]
    # stop ids: tokens seen in the rows' outputs, not in their first steps, so rows run a while first
    values, counts = new[:, 2:].unique(return_counts=True)
    eos = values[counts.argsort(descending=True, stable=True)][:4].tolist()
    return hf, ours, ids, mask, eos


def hf_generate(hf, ids, mask, eos, **options):
    with torch.no_grad():
        return hf.generate(ids, attention_mask=mask, max_new_tokens=NEW, pad_token_id=PAD, eos_token_id=eos, **options)


SEARCHES = {
    "greedy": {},
    "beam": {"num_beams": 4},
    "beam-short-early": {"num_beams": 4, "length_penalty": 0.5, "early_stopping": True},
    "beam-never": {"num_beams": 4, "early_stopping": "never"},
    "beam-long-never": {"num_beams": 4, "length_penalty": 2.0, "early_stopping": "never"},
    "beam-long-early": {"num_beams": 4, "length_penalty": 2.0, "early_stopping": True},
    "beam-negative": {"num_beams": 4, "length_penalty": -1.0},
}


@pytest.mark.parametrize("search", list(SEARCHES))
def test_greedy_and_beam_search_match_transformers(pair, search):
    hf, ours, ids, mask, eos = pair
    options = SEARCHES[search]
    for stop in [[e] for e in eos] + [eos[:2]]:
        expected = hf_generate(hf, ids, mask, stop, do_sample=False, **options)
        got = generate(ours, ids, mask, max_new_tokens=NEW, pad_token_id=PAD, eos_token_id=stop, **options)
        assert torch.equal(got, expected), f"{search} with eos {stop}:\nours {got.tolist()}\nhf   {expected.tolist()}"


def test_rows_stop_at_different_steps(pair):
    """The chosen stop ids do end rows early (otherwise the tests above would not test stopping)."""
    hf, ours, ids, mask, eos = pair
    got = generate(ours, ids, mask, max_new_tokens=NEW, pad_token_id=PAD, eos_token_id=eos, num_beams=4)
    new = got[:, -min(NEW, got.shape[1] - 1):]
    assert (new == PAD).any(), f"no row stopped early with eos {eos}: {got.tolist()}"


def test_without_cache_matches_transformers(pair):
    hf, ours, ids, mask, eos = pair
    expected = hf_generate(hf, ids, mask, eos, do_sample=False, num_beams=3)
    got = generate(ours, ids, mask, max_new_tokens=NEW, pad_token_id=PAD, eos_token_id=eos, num_beams=3, use_cache=False)
    assert torch.equal(got, expected)


@pytest.mark.parametrize("options", [
    {"temperature": 1.7},
    {"top_k": 5, "temperature": 0.8},
    {"top_p": 0.6},
    {"top_k": 20, "top_p": 0.9, "repetition_penalty": 1.3},
], ids=["temperature", "top_k", "top_p", "all"])
def test_seeded_sampling_matches_transformers(pair, options):
    """transformers samples from the global generator; a fresh one with the same seed holds the same
    state, so equal processors must give equal draws. (transformers' top_k defaults to 50; 0 turns it
    off, which is our default.)"""
    hf, ours, ids, mask, eos = pair
    torch.manual_seed(123)
    expected = hf_generate(hf, ids, mask, eos, do_sample=True, **{"top_k": 0, **options})
    got = generate(ours, ids, mask, max_new_tokens=NEW, pad_token_id=PAD, eos_token_id=eos, do_sample=True, seed=123, **options)
    assert torch.equal(got, expected), f"ours {got.tolist()}\nhf   {expected.tolist()}"


def test_greedy_repetition_penalty_matches_transformers(pair):
    hf, ours, ids, mask, eos = pair
    expected = hf_generate(hf, ids, mask, eos, do_sample=False, repetition_penalty=1.5)
    got = generate(ours, ids, mask, max_new_tokens=NEW, pad_token_id=PAD, eos_token_id=eos, repetition_penalty=1.5)
    assert torch.equal(got, expected)
