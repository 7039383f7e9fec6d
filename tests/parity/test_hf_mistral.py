"""Mistral interop beyond the generic family checks: sequences and cached decoding longer than the
sliding window, the windowless Mistral (v0.2/v0.3) that is a LLaMA, config.json defaults, and what
the family refuses."""

from __future__ import annotations

import json

import pytest
import torch

import transformers  # noqa: E402  (a dev dependency: the oracle these tests compare against)

import llm_modules  # noqa: E402
from llm_modules import CausalLM, ConfigError, ModelConfig  # noqa: E402
from llm_modules.generation import generate  # noqa: E402
from llm_modules.interop.mistral import MistralFamily  # noqa: E402

from family_models import mistral as published  # noqa: E402
from hf_helpers import assert_logits_match, assert_round_trip, load_hf, logits_of, randomize_, right_padded  # noqa: E402

VOCAB = 97


def tiny_mistral(**overrides) -> "transformers.MistralForCausalLM":
    torch.manual_seed(0)
    settings = dict(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5, sliding_window=4,
        tie_word_embeddings=False, rope_parameters={"rope_type": "default", "rope_theta": 1000.0},
    )
    model = transformers.MistralForCausalLM(transformers.MistralConfig(**{**settings, **overrides}))
    return randomize_(model).eval()


def test_longer_than_the_window_in_one_pass_and_with_a_kv_cache(tmp_path):
    """A window of 4 on rows of 20 tokens (right-padded) and on 16 cached decoding steps after
    left-padded prompts: every query past the 4th loses keys, in the full pass and in the cache."""
    hf = tiny_mistral()
    batch = right_padded(VOCAB, [20, 13, 17], seed=4)
    ours = assert_round_trip(hf, tmp_path, batch, batch["attention_mask"], transformers.AutoModelForCausalLM)
    assert ours.config.sliding_window == 4 and ours.config.layer_types is None

    hf.config.sliding_window = None  # the window must matter for this test to mean anything
    unwindowed = logits_of(hf, **batch)
    hf.config.sliding_window = 4
    assert (unwindowed[0, 4:] - logits_of(hf, **batch)[0, 4:]).abs().max() > 1e-2

    ids = torch.randint(3, VOCAB, (2, 6), generator=torch.Generator().manual_seed(2))
    mask = torch.tensor([[1] * 6, [0, 0, 1, 1, 1, 1]])
    for beams in (1, 4):
        with torch.no_grad():
            expected = hf.generate(ids, attention_mask=mask, max_new_tokens=16, do_sample=False, num_beams=beams,
                                   pad_token_id=1, eos_token_id=None)
        got = generate(ours, ids, mask, max_new_tokens=16, num_beams=beams, pad_token_id=1, eos_token_id=[])
        assert torch.equal(got, expected), f"{beams} beam(s):\nours {got.tolist()}\nhf   {expected.tolist()}"


def test_without_a_window_it_is_a_llama_unless_asked(tmp_path):
    """Mistral v0.2/v0.3 (sliding_window null) reads as a LLaMA would, exports as llama by
    structure, and as mistral with family="mistral"; transformers gives the same logits for both."""
    hf = tiny_mistral(sliding_window=None, head_dim=24)
    hf.save_pretrained(tmp_path / "hf")
    ours = llm_modules.from_hf(tmp_path / "hf")
    assert ours.config.sliding_window is None and ours.config.head_dim == 24
    batch = right_padded(VOCAB, [9, 5, 7], seed=1)
    expected = logits_of(hf, **batch)
    for family, model_type, cls in ((None, "llama", "LlamaForCausalLM"), ("mistral", "mistral", "MistralForCausalLM")):
        out = tmp_path / model_type
        llm_modules.to_hf(ours, out, family=family)
        written = json.loads((out / "config.json").read_text())
        assert written["model_type"] == model_type and written.get("sliding_window") is None
        exported = load_hf(transformers.AutoModelForCausalLM, out)
        assert type(exported).__name__ == cls
        assert_logits_match(logits_of(exported, **batch), expected, batch["attention_mask"])


def test_the_windowed_preset_exports_as_mistral(tmp_path):
    torch.manual_seed(0)
    ours = CausalLM(ModelConfig.from_preset("mistral-tiny", vocab_size=VOCAB, sliding_window=3))
    randomize_(ours.model, seed=2)
    llm_modules.to_hf(ours, tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["sliding_window"] == 3
    hf = load_hf(transformers.AutoModelForCausalLM, tmp_path)
    assert type(hf).__name__ == "MistralForCausalLM"
    batch = right_padded(VOCAB, [12, 8], seed=2)
    assert_logits_match(logits_of(hf, **batch), logits_of(ours, **batch), batch["attention_mask"])


def test_config_json_defaults_are_mistral_s():
    """Keys a hand-written config.json leaves out take MistralConfig's defaults, not LLaMA's: a
    4096-token window and 8 key/value heads; attention_bias/mlp_bias are not Mistral's and change nothing."""
    hf = dict(model_type="mistral", vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
              num_attention_heads=8, attention_bias=True, mlp_bias=True)
    config = MistralFamily().config_from_hf(hf)
    assert (config.sliding_window, config.kv_heads, config.max_seq_len) == (4096, 8, 131072)
    assert config.bias is False and config.activation == "swiglu"


REFUSED = [
    ({"sliding_window": 0}, "sliding_window=0 is not a window"),
    ({"layer_types": ["full_attention", "sliding_attention"]},
     "layer_types lists 'full_attention', but MistralForCausalLM gives every layer the sliding window"),
    ({"hidden_act": "tanh"}, "mistral config.json: activation 'tanh' is not supported"),
    ({"rope_parameters": {"rope_type": "made_up", "factor": 4.0, "rope_theta": 1e6}}, "'made_up'"),
]


@pytest.mark.parametrize("change, message", REFUSED, ids=["window", "layer_types", "activation", "rope"])
def test_refuses_what_it_cannot_represent(change, message):
    hf = dict(model_type="mistral", vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
              num_attention_heads=4, sliding_window=4)
    hf.update(change)
    with pytest.raises(ConfigError) as err:
        MistralFamily().config_from_hf(hf)
    assert message in str(err.value)


def test_export_refuses_biases_and_alternating_windows():
    config = ModelConfig.from_preset("mistral-tiny", bias=True, layer_types=["sliding", "full"])
    with pytest.raises(ConfigError, match="cannot export as mistral") as err:
        llm_modules.to_hf(CausalLM(config), "/nonexistent/never-written", family="mistral")
    assert "bias=True (the mistral family has bias=False" in str(err.value)
    assert "layer_types=['sliding', 'full'] (the mistral family has layer_types=None" in str(err.value)


@pytest.mark.parametrize("preset", list(published.PUBLISHED))
def test_the_published_config_json_reads_as_the_preset(preset):
    assert MistralFamily().config_from_hf(published.PUBLISHED[preset]) == ModelConfig.from_preset(preset)


def test_a_windowed_phi3_without_longrope_exports_as_mistral_unless_asked(tmp_path):
    """A Phi-3 with plain RoPE over whole heads and a window (Phi-3-mini-4k) computes what a Mistral
    does: export takes the first family by name (mistral); family="phi3" writes Phi-3's fused layout."""
    torch.manual_seed(0)
    ours = CausalLM(ModelConfig.from_preset("mistral-tiny", vocab_size=VOCAB, sliding_window=4))
    randomize_(ours.model, seed=8)
    batch = right_padded(VOCAB, [12, 8], seed=8)
    for family, cls in ((None, "MistralForCausalLM"), ("phi3", "Phi3ForCausalLM")):
        llm_modules.to_hf(ours, tmp_path / str(family), family=family)
        hf = load_hf(transformers.AutoModelForCausalLM, tmp_path / str(family))
        assert type(hf).__name__ == cls
        assert_logits_match(logits_of(hf, **batch), logits_of(ours, **batch), batch["attention_mask"])


def test_scaled_rope_round_trips(tmp_path):
    rope = {"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 8, "rope_theta": 1000.0}
    hf = tiny_mistral(rope_parameters=rope, sliding_window=6)
    batch = right_padded(VOCAB, [16, 11], seed=9)
    ours = assert_round_trip(hf, tmp_path, batch, batch["attention_mask"], transformers.AutoModelForCausalLM)
    assert ours.config.position["scaling"]["type"] == "yarn"
