"""Soft prompts (``prompt``, ``ptuning``): the model reads P learned embeddings before the real
tokens, exactly as if they had been embedded tokens at positions 0..P-1; padding, KV-cache
decoding and every LM kind see the same thing; only the prompt trains."""

from __future__ import annotations

import copy
import pickle
import re
from pathlib import Path

import pytest
import torch

import llm_modules.nn
from llm_modules import CausalLM, ModelConfig
from llm_modules.generation import generate
from llm_modules.nn.masks import AttentionMask
from llm_modules.nn.lm import DecoderLM
from llm_modules.peft import adapters_disabled, apply_peft, peft_state_dict
from llm_modules.peft.prompt import LSTMEncoder, MLPEncoder, PromptEncoder, SoftPrompt
from llm_modules.registry import ConfigError

from _virtual_token_helpers import base_model, ids, left_padded, logits, max_step_difference, train_a_few_steps_and_check

P = 4


def model(preset: str, spec=None, seed: int = 0):
    """The torch model of a preset's LM kind, in eval mode, with ``spec`` applied."""
    net = base_model(preset, seed)
    if spec is not None:
        apply_peft(net, spec)
        torch.nn.init.normal_(next(net.virtual_tokens.parameters()), std=0.5)  # not a near-zero prompt
    return net


# ---- the model sees [E; embed(ids)] ----------------------------------------------------------------------------


@pytest.mark.parametrize("preset", ["llama-tiny", "gpt2-tiny", "bert-tiny", "glm-tiny"])
def test_prompt_equals_embeddings_prepended_by_hand(preset):
    net = model(preset, {"name": "prompt", "num_virtual_tokens": P})
    tokens = ids(2, 6)
    prompt = net.virtual_tokens.weight.unsqueeze(0).expand(2, -1, -1)
    x = torch.cat((prompt, net.embed(tokens)), 1)
    n = P + tokens.shape[1]
    prefix = torch.tensor([2, 5]) if preset == "glm-tiny" else None
    mask = AttentionMask(n, n, causal=net.causal, prefix_lengths=None if prefix is None else prefix + P)
    expected = net.head(net.stack(x, mask, torch.arange(n).expand(2, n)))[:, P:]
    got = logits(net, tokens, prefix_lengths=prefix)
    assert got.shape == (2, tokens.shape[1], net.config.vocab_size)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    net.virtual_tokens = None  # the prompt made a difference
    assert (logits(net, tokens, prefix_lengths=prefix) - expected).abs().max() > 1e-3


@pytest.mark.parametrize("preset", ["llama-tiny", "bert-tiny"])
def test_prompt_reaches_the_model_through_its_public_inputs(preset):
    """What the prompted model computes is the plain model fed ``inputs_embeds``: the prompt, then
    the embedded tokens; its logits for the prompt are dropped."""
    net = model(preset, {"name": "prompt", "num_virtual_tokens": P})
    tokens = ids(2, 6)
    got = logits(net, tokens)
    x = torch.cat((net.virtual_tokens.weight.unsqueeze(0).expand(2, -1, -1), net.embed(tokens)), 1)
    with adapters_disabled(net):
        torch.testing.assert_close(got, net(inputs_embeds=x)[:, P:], atol=1e-5, rtol=0)


def test_the_torch_models_know_nothing_of_virtual_tokens():
    """nn/ has no soft prompts or learned prefixes: the PEFT methods own them (peft.virtual_tokens)."""
    sources = Path(llm_modules.nn.__file__).parent.glob("*.py")
    mentions = [p.name for p in sources if re.search(r"virtual|llm_modules\.peft|soft prompt", p.read_text(), re.I)]
    assert mentions == []


def test_a_prompted_model_is_still_its_kind_changed_in_place():
    lm = CausalLM(ModelConfig.from_preset("llama-tiny")).eval()
    net, base_keys = lm.model, set(lm.state_dict())
    apply_peft(lm, {"name": "prompt", "num_virtual_tokens": P})
    assert lm.model is net and isinstance(net, DecoderLM)
    assert set(lm.state_dict()) == base_keys | {"model.virtual_tokens.weight"}
    tokens = ids(2, 5)
    expected = lm(tokens)
    for copied in (copy.deepcopy(lm), pickle.loads(pickle.dumps(lm))):
        torch.testing.assert_close(copied(tokens), expected, atol=0, rtol=0)


def test_seq2seq_prompt_leads_the_encoder_and_the_decoder_reads_it():
    net = model("t5-v1_1-tiny", {"name": "prompt", "num_virtual_tokens": P})
    tokens, decoder = ids(2, 6), ids(2, 3, seed=5)
    x = torch.cat((net.virtual_tokens.weight.unsqueeze(0).expand(2, -1, -1), net.embed(tokens)), 1)
    n = x.shape[1]
    memory = net.encoder(x, AttentionMask(n, n), torch.arange(n).expand(2, n))
    assert net.encode(tokens).shape == (2, n, net.config.d_model)
    torch.testing.assert_close(net.encode(tokens), memory, atol=1e-5, rtol=0)
    torch.testing.assert_close(net(tokens, decoder_input_ids=decoder), net.decode(decoder, memory), atol=1e-5, rtol=0)


# ---- padding and decoding ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", [{"name": "prompt", "num_virtual_tokens": P},
                                  {"name": "ptuning", "num_virtual_tokens": 3, "encoder": "lstm"}], ids=["prompt", "ptuning"])
@pytest.mark.parametrize("preset", ["llama-tiny", "bloom-tiny", "glm-tiny", "t5-v1_1-tiny", "bert-tiny"])
def test_padded_rows_equal_rows_alone(preset, spec):
    """Left and right padding: each row's real-token logits are those of the row run alone. ALiBi
    (bloom) and T5 buckets measure index distances, so this also checks that the virtual tokens sit
    next to each row's real tokens whatever the padding."""
    net = model(preset, spec)
    lengths, total = [6, 3, 5], 6
    rows = [ids(1, n, seed=10 + i) for i, n in enumerate(lengths)]
    for side in ("left", "right"):
        batch = torch.zeros(3, total, dtype=torch.long)
        mask = torch.zeros(3, total, dtype=torch.long)
        for i, row in enumerate(rows):
            where = slice(total - lengths[i], total) if side == "left" else slice(0, lengths[i])
            batch[i, where], mask[i, where] = row[0], 1
        prefix = torch.tensor([2, 3, 1])
        together = logits(net, batch, mask, prefix, decoder=ids(3, 3, seed=7))
        for i, row in enumerate(rows):
            alone = logits(net, row, None, prefix[i : i + 1], decoder=ids(3, 3, seed=7)[i : i + 1])
            real = together[i] if hasattr(net, "encode") else together[i][mask[i].bool()]
            torch.testing.assert_close(real, alone[0], atol=1e-5, rtol=0, msg=f"{side} padding, row {i}")


@pytest.mark.parametrize("spec", [{"name": "prompt", "num_virtual_tokens": P},
                                  {"name": "ptuning", "num_virtual_tokens": 3, "encoder": "mlp"}], ids=["prompt", "ptuning"])
@pytest.mark.parametrize("preset", ["llama-tiny", "glm-tiny", "t5-v1_1-tiny"])
def test_cached_decoding_equals_uncached(preset, spec):
    net = model(preset, spec)
    tokens, mask = left_padded([5, 3, 4])
    assert max_step_difference(net, tokens, mask) < 1e-4
    with_cache = generate(net, tokens, mask, max_new_tokens=5, eos_token_id=[])
    assert torch.equal(with_cache, generate(net, tokens, mask, max_new_tokens=5, eos_token_id=[], use_cache=False))


# ---- training -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", [{"name": "prompt", "num_virtual_tokens": P},
                                  {"name": "ptuning", "num_virtual_tokens": P, "encoder": "mlp", "hidden_size": 16},
                                  {"name": "ptuning", "num_virtual_tokens": P, "encoder": "lstm", "hidden_size": 16}],
                         ids=["prompt", "ptuning-mlp", "ptuning-lstm"])
def test_only_the_prompt_trains(spec):
    torch.manual_seed(0)
    net = CausalLM(ModelConfig.from_preset("llama-tiny")).model
    base = {k: v.clone() for k, v in net.state_dict().items()}
    method = apply_peft(net, spec)
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert trainable == set(method.added_keys) and all(k.startswith("virtual_tokens.") for k in trainable)
    assert set(peft_state_dict(net, method)) == trainable
    train_a_few_steps_and_check(net, method, base)


# ---- P-tuning's encoder ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("encoder", ["mlp", "lstm"])
def test_ptuning_prompt_is_its_encoders_output_and_merges(encoder):
    net = model("llama-tiny")
    method = apply_peft(net, {"name": "ptuning", "num_virtual_tokens": 3, "encoder": encoder, "hidden_size": 24})
    prompt = net.virtual_tokens
    assert isinstance(prompt, PromptEncoder)
    assert isinstance(prompt.encoder, LSTMEncoder if encoder == "lstm" else MLPEncoder)
    expected = prompt.encoder(prompt.inputs.unsqueeze(0))[0]
    torch.testing.assert_close(prompt.embeddings("stack", 2)[1], expected)
    tokens = ids(2, 5)
    unmerged = net(tokens)
    method.merge(net)
    keys = set(net.state_dict())
    assert {k for k in keys if k.startswith("virtual_tokens.")} == {"virtual_tokens.weight"} == set(method.added_keys)
    torch.testing.assert_close(net(tokens), unmerged, atol=1e-6, rtol=0)
    method.unmerge(net)
    assert "virtual_tokens.weight" not in net.state_dict() and "virtual_tokens.inputs" in method.added_keys
    torch.testing.assert_close(net(tokens), unmerged, atol=1e-6, rtol=0)


# ---- options and refusals ----------------------------------------------------------------------------------------


def test_prompt_inits():
    net = model("bert-tiny")  # token types: the prompt starts from what the embedding gives a token
    apply_peft(net, {"name": "prompt", "num_virtual_tokens": 5, "init": [7, 9]})
    torch.testing.assert_close(net.virtual_tokens.weight, net.embed(torch.tensor([[7, 9, 7, 9, 7]]))[0])
    net = model("llama-tiny")
    apply_peft(net, {"name": "prompt", "num_virtual_tokens": 6, "init": "vocab"})
    table = net.embed.tokens.weight
    assert all(bool((table == row).all(1).any()) for row in net.virtual_tokens.weight), "each row is a token's embedding"
    net = model("llama-tiny")
    apply_peft(net, {"name": "prompt", "num_virtual_tokens": 50})
    assert isinstance(net.virtual_tokens, SoftPrompt)
    assert 0.5 < net.virtual_tokens.weight.std().item() / table.std().item() < 2.0


@pytest.mark.parametrize(
    "spec, message",
    [({"name": "ptuning", "encoder": "gru"}, "choices: mlp, lstm"),
     ({"name": "prompt", "init": "text"}, "list of token ids"),
     ({"name": "prompt", "init": [1, 9999]}, "vocab_size=512"),
     ({"name": "prompt", "num_virtual_tokens": 0}, "positive integer"),
     ({"name": "prompt", "virtual_tokens": 3}, "num_virtual_tokens")],
)
def test_bad_options_name_the_fix(spec, message):
    with pytest.raises(ConfigError, match=message):
        apply_peft(model("llama-tiny"), spec)


def test_refusals():
    net = model("llama-tiny", {"name": "prompt", "num_virtual_tokens": P})
    with pytest.raises(ConfigError, match="already has virtual tokens"):
        apply_peft(net, {"name": "ptuning"})
    with pytest.raises(ValueError, match="document_ids"):
        net(ids(2, 6), document_ids=torch.tensor([[0, 0, 0, 1, 1, 1]] * 2))
    with pytest.raises(ConfigError, match="cannot be merged"):
        apply_peft(model("llama-tiny"), "prompt").merge(net)
