"""generate / fill_mask on real (tiny) modules: defaults taken from the model and its tokenizer,
stop strings decoded with a trained tokenizer, mask filling, and the errors for misuse."""

from __future__ import annotations

import pytest
import torch

from llm_modules import CausalLM, MaskedLM, ModelConfig, PrefixLM, Seq2SeqLM
from llm_modules.data.sources import stdlib_root
from llm_modules.data.tokenizer import Tokenizer
from llm_modules.generation import GenerationConfig, fill_mask, generate
from llm_modules.generation.search import decode
from llm_modules.registry import ConfigError

VOCAB = 420


@pytest.fixture(scope="module")
def tok(tmp_path_factory) -> Tokenizer:
    files = [str(stdlib_root() / f) for f in ("textwrap.py", "shlex.py", "colorsys.py")]
    return Tokenizer.train(files, vocab_size=VOCAB, num_sentinels=8)


def tiny(kind=CausalLM, **overrides):
    torch.manual_seed(0)
    settings = dict(vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=4, max_seq_len=64, position="rope", norm="rmsnorm")
    return kind(ModelConfig(**{**settings, **overrides}))


def always(module, token: int):
    """Make ``module`` predict ``token`` at every position (zero head, a bias on that token)."""
    with torch.no_grad():
        module.model.head.proj.weight.zero_()
        module.model.head.proj.bias.zero_()
        module.model.head.proj.bias[token] = 10.0
    return module


class ScriptSession:
    """A session that emits fixed token rows, step by step (one-hot logits)."""

    def __init__(self, prefix: torch.Tensor, script: torch.Tensor, vocab: int):
        self.prefix_ids, self.prefix_mask = prefix, torch.ones_like(prefix)
        self.script, self.vocab, self.t = script, vocab, 0

    def _logits(self):
        return torch.nn.functional.one_hot(self.script[:, self.t], self.vocab).float() * 10

    def start(self):
        return self._logits()

    def step(self, tokens):
        self.t += 1
        return self._logits()

    def reorder(self, index):
        raise AssertionError("not used by greedy decoding")


# ---- stop strings -----------------------------------------------------------------------------------------


def test_stop_strings_end_on_the_token_that_completes_them(tok):
    lines = tok.encode("alpha = 1\nbeta = 2\ngamma = 3\ndelta = 4\n")
    other = tok.encode("x = 0\n" * 12)[: len(lines)]
    script = torch.tensor([lines, other])
    prompt = torch.tensor([tok.encode("beta = 2\n"), tok.encode("beta = 2\n")])  # in the prompt: ignored
    config = GenerationConfig(max_new_tokens=len(lines), stop_strings=["beta = 2", "never there"], pad_token_id=0)
    out = decode(ScriptSession(prompt, script, tok.vocab_size), config, tokenizer=tok)
    assert out.shape[1] == prompt.shape[1] + len(lines)  # row 1 never stops: the full length
    new = out[0, prompt.shape[1]:].tolist()
    end = max(i for i, t in enumerate(new) if t != 0) + 1
    assert "beta = 2" in tok.decode(new[:end]) and "beta = 2" not in tok.decode(new[: end - 1])
    assert new[:end] == lines[:end] and set(new[end:]) == {0}
    assert out[1, prompt.shape[1]:].tolist() == other


def test_stop_strings_through_generate_use_the_checkpoint_tokenizer(tok):
    token = tok.encode("return")[0]
    module = always(tiny(lm_head_bias=True), token)
    module.tokenizer_bytes = tok.to_bytes()
    prompt = torch.tensor([[5, 6, 7]])
    out = generate(module, prompt, max_new_tokens=8, stop_strings=tok.decode([token, token]), eos_token_id=[])
    assert out.shape == (1, 5)


# ---- defaults from the model ------------------------------------------------------------------------------


def test_eos_defaults_to_the_config_then_the_tokenizer(tok):
    module = always(tiny(lm_head_bias=True), tok.eos_id)
    prompt = torch.tensor([[5, 6, 7]])
    assert generate(module, prompt, max_new_tokens=4).shape == (1, 7)  # no eos known: runs on
    module.tokenizer_bytes = tok.to_bytes()
    assert generate(module, prompt, max_new_tokens=4).tolist() == [[5, 6, 7, tok.eos_id]]
    assert generate(module, prompt, max_new_tokens=4, eos_token_id=[]).shape == (1, 7)  # [] = no stop token
    module.config.eos_token_id = 9
    assert generate(module, prompt, max_new_tokens=4).shape == (1, 7)  # the config's eos wins


def test_generate_restores_training_mode_and_keeps_the_global_rng():
    module = tiny()
    module.train()
    state = torch.get_rng_state()
    out = generate(module, torch.tensor([[1, 2, 3]]), max_new_tokens=5, do_sample=True, top_k=10)
    assert module.training and all(m.training for m in module.modules())
    assert torch.equal(torch.get_rng_state(), state) and out.shape == (1, 8)


def test_max_new_tokens_zero_returns_the_prompt():
    prompt = torch.tensor([[0, 4, 5], [3, 4, 5]])
    mask = torch.tensor([[0, 1, 1], [1, 1, 1]])
    assert torch.equal(generate(tiny(), prompt, mask, max_new_tokens=0), prompt)


@pytest.mark.parametrize("kind", [PrefixLM, Seq2SeqLM])
def test_prefix_and_seq2seq_models_generate_the_same_with_and_without_cache(kind):
    module = tiny(kind)
    prompt = torch.tensor([[0, 0, 4, 5, 6], [7, 8, 9, 10, 11]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    if kind is Seq2SeqLM:  # an encoder input may be padded on the right
        prompt, mask = prompt.flip(1), mask.flip(1)
    for options in ({}, {"num_beams": 3, "eos_token_id": 5, "pad_token_id": 0}):
        cached = generate(module, prompt, mask, max_new_tokens=6, **options)
        assert torch.equal(cached, generate(module, prompt, mask, max_new_tokens=6, use_cache=False, **options))


def test_generate_refuses_bad_ids_and_masked_models():
    prompt = torch.tensor([[1, 2]])
    with pytest.raises(ConfigError, match="eos_token_id=500"):
        generate(tiny(), prompt, eos_token_id=500)
    with pytest.raises(ConfigError, match="fill_mask"):
        generate(tiny(MaskedLM), prompt)
    with pytest.raises(ConfigError, match="stop_strings need a tokenizer"):
        generate(tiny(), prompt, stop_strings="x")


# ---- fill_mask --------------------------------------------------------------------------------------------


def test_fill_mask_gives_the_top_tokens_of_each_masked_position(tok):
    module = tiny(MaskedLM, position="learned", norm="layernorm")
    ids = torch.tensor([[10, tok.mask_id, 12, tok.mask_id], [20, 21, tok.mask_id, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    with pytest.raises(ConfigError, match="mask_token_id is needed"):
        fill_mask(module, ids, mask)
    module.tokenizer_bytes = tok.to_bytes()
    result = fill_mask(module, ids, mask, top_k=3)
    assert result.row.tolist() == [0, 0, 1] and result.position.tolist() == [1, 3, 2] and len(result) == 3
    module.eval()
    with torch.no_grad():
        probs = module(ids, mask).softmax(-1)
    for i, (r, p) in enumerate(zip(result.row.tolist(), result.position.tolist())):
        best = probs[r, p].topk(3)
        assert result.token_ids[i].tolist() == best.indices.tolist()
        assert torch.allclose(result.probs[i], best.values)
    assert [pos for pos, _, _ in result.for_row(0)] == [1, 3]
    same = fill_mask(module.model, ids, mask, top_k=3, mask_token_id=tok.mask_id)  # the torch model works too
    assert torch.equal(same.token_ids, result.token_ids)


def test_fill_mask_errors(tok):
    masked = tiny(MaskedLM)
    with pytest.raises(ConfigError, match="needs a MaskedLM"):
        fill_mask(tiny(), torch.tensor([[1, 4]]), mask_token_id=4)
    with pytest.raises(ConfigError, match="no mask token"):
        fill_mask(masked, torch.tensor([[1, 2]]), mask_token_id=4)
    with pytest.raises(ConfigError, match="top_k"):
        fill_mask(masked, torch.tensor([[1, 4]]), mask_token_id=4, top_k=0)
