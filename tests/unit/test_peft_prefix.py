"""Prefix tuning: every self-attention layer attends to P learned keys/values, exactly as if a KV
cache already held them for positions 0..P-1; padding and cached decoding agree with that; the
MLP reparameterization folds into plain prefixes; only the prefixes train."""

from __future__ import annotations

import pytest
import torch

from llm_modules import CausalLM, ModelConfig
from llm_modules.generation import generate
from llm_modules.generation.session import open_session
from llm_modules.nn.kv_cache import KVCache
from llm_modules.nn.masks import AttentionMask
from llm_modules.peft import apply_peft, peft_state_dict
from llm_modules.registry import ConfigError

from _virtual_token_helpers import base_model, ids, left_padded, logits, max_step_difference, train_a_few_steps_and_check

P = 3


def model(preset: str, spec=None, seed: int = 0):
    net = base_model(preset, seed)
    if spec is not None:
        apply_peft(net, {"name": "prefix", "num_virtual_tokens": P, **spec})
    return net


def prefilled(net, stack: str, batch: int) -> KVCache:
    """An ordinary KV cache holding the learned prefix as the keys/values of P earlier tokens."""
    cache = KVCache()
    for i, (k, v) in enumerate(net.virtual_tokens.key_values(stack, batch)):
        cache.layer(i).self_attn.append(k, v)
    cache.length = P
    return cache


# ---- the model sees a KV cache that already holds the prefix ----------------------------------------------------


@pytest.mark.parametrize("preset", ["llama-tiny", "gpt2-tiny", "bloom-tiny", "glm-tiny", "bert-tiny"])
def test_prefix_equals_a_prefilled_cache(preset):
    net = model(preset, {})
    tokens = ids(2, 6)
    prefix = torch.tensor([2, 4]) if preset == "glm-tiny" else None
    got = logits(net, tokens, prefix_lengths=prefix)
    caches = prefilled(net, "stack", 2)
    prompts = net.virtual_tokens
    net.virtual_tokens = None  # the reference runs the plain model on its ordinary cache path
    expected = net.head(net.hidden(tokens, None, None if prefix is None else prefix + P, cache=caches))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert (logits(net, tokens, prefix_lengths=prefix) - expected).abs().max() > 1e-3, "the prefix matters"
    net.virtual_tokens = prompts


def test_seq2seq_prefix_serves_encoder_and_decoder_self_attention():
    net = model("t5-v1_1-tiny", {})
    tokens, decoder = ids(2, 6), ids(2, 4, seed=5)
    got = net(tokens, decoder_input_ids=decoder)
    encoder_cache, decoder_cache = prefilled(net, "encoder", 2), prefilled(net, "decoder", 2)
    public_cache = prefilled(net, "encoder", 2)
    net.virtual_tokens = None
    n = tokens.shape[1]
    memory = net.encoder(net.embed(tokens), AttentionMask(n, n + P, q_offset=P), torch.arange(P, n + P).expand(2, n),
                         cache=encoder_cache)
    # the same through the model's public input: an encoder cache that holds the prefix
    torch.testing.assert_close(net.encode(tokens, cache=public_cache), memory, atol=0, rtol=0)
    torch.testing.assert_close(got, net.decode(decoder, memory, cache=decoder_cache), atol=1e-5, rtol=0)


# ---- padding and decoding ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", ["llama-tiny", "bloom-tiny", "t5-v1_1-tiny", "bert-tiny"])
def test_padded_rows_equal_rows_alone(preset):
    """ALiBi (bloom) and T5 buckets read index distances: the prefix must sit next to each row's
    real tokens for a padded row to match the row alone."""
    net = model(preset, {})
    lengths, total = [6, 3, 5], 6
    rows = [ids(1, n, seed=10 + i) for i, n in enumerate(lengths)]
    decoder = ids(3, 3, seed=7)
    for side in ("left", "right"):
        batch = torch.zeros(3, total, dtype=torch.long)
        mask = torch.zeros(3, total, dtype=torch.long)
        for i, row in enumerate(rows):
            where = slice(total - lengths[i], total) if side == "left" else slice(0, lengths[i])
            batch[i, where], mask[i, where] = row[0], 1
        together = logits(net, batch, mask, decoder=decoder)
        for i, row in enumerate(rows):
            alone = logits(net, row, decoder=decoder[i : i + 1])[0]
            real = together[i] if hasattr(net, "encode") else together[i][mask[i].bool()]
            torch.testing.assert_close(real, alone, atol=1e-5, rtol=0, msg=f"{side} padding, row {i}")


@pytest.mark.parametrize("preset", ["llama-tiny", "bloom-tiny", "glm-tiny", "t5-v1_1-tiny"])
def test_cached_decoding_equals_uncached(preset):
    net = model(preset, {"reparameterize": False})
    tokens, mask = left_padded([5, 3, 4])
    assert max_step_difference(net, tokens, mask) < 1e-4
    options = {"max_new_tokens": 5, "eos_token_id": [], "num_beams": 2}
    assert torch.equal(generate(net, tokens, mask, **options), generate(net, tokens, mask, use_cache=False, **options))


# ---- merging the reparameterization -----------------------------------------------------------------------------


@pytest.mark.parametrize("preset", ["llama-tiny", "t5-v1_1-tiny"])
def test_merge_folds_the_mlp_into_plain_prefixes(preset):
    net = model(preset)
    method = apply_peft(net, {"name": "prefix", "num_virtual_tokens": P, "hidden_size": 32})
    tokens = ids(2, 5)
    reparameterized = logits(net, tokens)
    mlp_keys = {k for k in method.added_keys if ".mlp." in k or k.endswith(".inputs")}
    assert mlp_keys == set(method.added_keys) and len(mlp_keys) == 5 * len(net.virtual_tokens.stacks)

    method.merge(net)
    keys = set(net.state_dict())
    assert not keys & mlp_keys, "the MLP leaves the state dict"
    folded = {f"virtual_tokens.stacks.{name}.prefix" for name in net.stack_names}
    assert folded == set(method.added_keys) == set(peft_state_dict(net, method)) <= keys
    torch.testing.assert_close(logits(net, tokens), reparameterized, atol=1e-6, rtol=0)
    method.merge(net)  # merging again changes nothing
    assert set(method.added_keys) == folded

    method.unmerge(net)
    assert set(method.added_keys) == mlp_keys <= set(net.state_dict()) and not folded & set(net.state_dict())
    torch.testing.assert_close(logits(net, tokens), reparameterized, atol=1e-6, rtol=0)
    with pytest.raises(ConfigError, match="nothing to unmerge"):
        method.unmerge(net)


# ---- training ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reparameterize", [True, False])
def test_only_the_prefix_trains(reparameterize):
    torch.manual_seed(0)
    net = CausalLM(ModelConfig.from_preset("llama-tiny")).model
    base = {k: v.clone() for k, v in net.state_dict().items()}
    method = apply_peft(net, {"name": "prefix", "num_virtual_tokens": P, "reparameterize": reparameterize})
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert trainable == set(method.added_keys)
    train_a_few_steps_and_check(net, method, base)


# ---- refusals ------------------------------------------------------------------------------------------------------


def test_refusals():
    net = model("llama-tiny", {})
    with pytest.raises(ValueError, match="document_ids"):
        net(ids(2, 6), document_ids=torch.tensor([[0, 0, 0, 1, 1, 1]] * 2))
    net.stack.checkpoint_blocks([0])
    with pytest.raises(ValueError, match="activation_checkpointing"):
        net(ids(2, 6))
    with torch.no_grad():
        net(ids(2, 6))  # inference does not checkpoint
    with pytest.raises(ConfigError, match="reparameterize: true"):
        apply_peft(model("llama-tiny"), {"name": "prefix", "reparameterize": False, "hidden_size": 8})


# ---- structured attention and adapter files -----------------------------------------------------------------------


STRUCTURED = {"window": {"sliding_window": 4, "position": "alibi"}, "stride": {"sparse_stride": 3},
              "mqa": {"n_kv_heads": 1, "position": "sinusoidal"}, "flex": {"attention": "flex", "position": "rope"}}


@pytest.mark.parametrize(
    "method, overrides",
    [(m, STRUCTURED[s]) for m in ("prefix", "prompt") for s in STRUCTURED if (m, s) != ("prompt", "flex")],
    ids=[f"{m}-{s}" for m in ("prefix", "prompt") for s in STRUCTURED if (m, s) != ("prompt", "flex")],
)
def test_cached_decoding_with_structured_attention(method, overrides):
    """Windows and strides treat the virtual tokens as the tokens at positions 0..P-1, the same
    way with and without the cache."""
    torch.manual_seed(0)
    net = CausalLM(ModelConfig(vocab_size=50, d_model=32, n_layers=2, n_heads=4, max_seq_len=32, **overrides)).model.eval()
    apply_peft(net, {"name": method, "num_virtual_tokens": P})
    tokens, mask = left_padded([6, 3, 5])
    tokens = tokens % 50
    options = {"max_new_tokens": 6, "eos_token_id": []}
    cached = open_session(net, tokens, mask)
    plain = open_session(net, tokens, mask, use_cache=False)
    worst = (cached.start() - plain.start()).abs().max().item()
    for new in torch.arange(6).view(6, 1).expand(6, 3) + 7:
        worst = max(worst, (cached.step(new) - plain.step(new)).abs().max().item())
    assert worst < 1e-4
    assert torch.equal(generate(net, tokens, mask, **options), generate(net, tokens, mask, use_cache=False, **options))


@pytest.mark.parametrize("spec", [{"name": "prefix", "num_virtual_tokens": P, "hidden_size": 16},
                                  {"name": "ptuning", "num_virtual_tokens": P, "encoder": "lstm"},
                                  {"name": "prompt", "num_virtual_tokens": P, "init": "vocab"}], ids=["prefix", "ptuning", "prompt"])
def test_adapter_file_round_trip(tmp_path, spec):
    """A LanguageModel takes the method too (its torch model gets the virtual tokens), and an
    adapter file restores them on a fresh base; a folded (merged) method is not saved."""
    from llm_modules.peft import load_adapter, save_adapter

    torch.manual_seed(0)
    lm = CausalLM(ModelConfig.from_preset("llama-tiny")).eval()
    method = apply_peft(lm, spec)
    assert all(k.startswith("model.virtual_tokens.") for k in method.added_keys)
    for p in lm.parameters():
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.3)
    tokens = ids(2, 5)
    expected = lm(tokens)
    save_adapter(tmp_path / "adapter", lm, method)
    torch.manual_seed(0)
    fresh = CausalLM(ModelConfig.from_preset("llama-tiny")).eval()
    load_adapter(tmp_path / "adapter", fresh)
    torch.testing.assert_close(fresh(tokens), expected, atol=1e-6, rtol=0)
    if spec["name"] != "prompt":
        method.merge(lm)
        with pytest.raises(ConfigError, match="unmerge"):
            save_adapter(tmp_path / "merged", lm, method)
