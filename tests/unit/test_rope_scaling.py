"""RoPE scaling variants against transformers' own RoPE initialisation (``ROPE_INIT_FUNCTIONS``)
and its rotary embedding module (dynamic NTK's state, longrope's short/long choice), the per-layer
base of sliding layers, and learned positions with an offset."""

from __future__ import annotations

import math

import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS  # noqa: E402
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding  # noqa: E402

from llm_modules import ConfigError  # noqa: E402
from llm_modules.nn.positions import LearnedAbsolute, PositionEncoding, RoPE  # noqa: E402
from llm_modules.registry import POSITIONS  # noqa: E402

MAX_POS = 64


def hf_config(head_dim: int, params: dict, max_pos: int = MAX_POS) -> "transformers.LlamaConfig":
    return transformers.LlamaConfig(hidden_size=head_dim * 2, num_attention_heads=2, head_dim=head_dim,
                                     max_position_embeddings=max_pos, rope_parameters=dict(params))


def ours_for(head_dim: int, params: dict, max_pos: int = MAX_POS) -> RoPE:
    """Our RoPE for transformers' ``rope_parameters``: dynamic's threshold is its max_position_embeddings."""
    scaling = {k: v for k, v in params.items() if k not in ("rope_type", "rope_theta", "partial_rotary_factor")}
    if params["rope_type"] == "dynamic":
        scaling["original_max_position_embeddings"] = max_pos
    if params["rope_type"] == "longrope" and "factor" not in scaling:
        scaling["factor"] = max_pos / scaling["original_max_position_embeddings"]
    return RoPE(head_dim, theta=params["rope_theta"], fraction=params.get("partial_rotary_factor", 1.0),
                scaling={"type": params["rope_type"], **scaling})


def factors(n: int, seed: int) -> list[float]:
    return (1.0 + 3 * torch.rand(n, generator=torch.Generator().manual_seed(seed))).tolist()


CASES = {
    "linear": {"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0},
    "linear-partial": {"rope_type": "linear", "rope_theta": 500000.0, "factor": 4.5, "partial_rotary_factor": 0.5},
    "llama3": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
    "llama3-small-original": {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
                              "high_freq_factor": 4.0, "original_max_position_embeddings": 16},
    "yarn": {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 16},
    "yarn-betas-untruncated": {"rope_type": "yarn", "rope_theta": 1e6, "factor": 8.0, "beta_fast": 16.0,
                               "beta_slow": 2.0, "truncate": False, "original_max_position_embeddings": 32},
    "yarn-mscale": {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 40.0, "mscale": 1.0,
                    "mscale_all_dim": 0.707, "original_max_position_embeddings": 16},
    "yarn-attention-factor": {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 2.0, "attention_factor": 0.8,
                              "original_max_position_embeddings": 32},
    "longrope": {"rope_type": "longrope", "rope_theta": 10000.0, "short_factor": factors(8, 0),
                 "long_factor": factors(8, 1), "original_max_position_embeddings": 16},
    "longrope-factor-partial": {"rope_type": "longrope", "rope_theta": 10000.0, "factor": 3.0,
                                "partial_rotary_factor": 0.5, "short_factor": factors(4, 2),
                                "long_factor": factors(4, 3), "original_max_position_embeddings": 16},
    "dynamic": {"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0},
    "dynamic-odd-factor": {"rope_type": "dynamic", "rope_theta": 500000.0, "factor": 1.1},
}


@pytest.mark.parametrize("case", list(CASES))
def test_build_time_frequencies_and_attention_factor_equal_transformers(case):
    params = CASES[case]
    expected, factor = ROPE_INIT_FUNCTIONS[params["rope_type"]](hf_config(16, params))
    ours = ours_for(16, params)
    assert torch.equal(ours.inv_freq, expected), (ours.inv_freq, expected)
    assert ours.attention_factor == factor


@pytest.mark.parametrize("case", ["dynamic", "dynamic-odd-factor"])
@pytest.mark.parametrize("length", [MAX_POS + 1, 100, 1000])
def test_dynamic_frequencies_for_a_long_sequence_equal_transformers(case, length):
    params = CASES[case]
    expected, _ = ROPE_INIT_FUNCTIONS["dynamic"](hf_config(16, params), seq_len=torch.tensor(length))
    ours = ours_for(16, params)
    assert torch.equal(ours.frequencies_for(torch.arange(length).unsqueeze(0)), expected)
    # transformers' build-time path (a Python int length) differs only by rounding
    at_int, _ = ROPE_INIT_FUNCTIONS["dynamic"](hf_config(16, params), seq_len=length)
    torch.testing.assert_close(ours.frequencies_for(torch.arange(length).unsqueeze(0)), at_int, rtol=1e-6, atol=0)


def test_longrope_long_factors_equal_transformers():
    params = CASES["longrope"]
    expected, _ = ROPE_INIT_FUNCTIONS["longrope"](hf_config(16, params), seq_len=17)
    assert torch.equal(ours_for(16, params).long_inv_freq, expected)


@pytest.mark.parametrize("case", ["dynamic", "longrope", "yarn", "llama3"])
def test_tables_follow_transformers_rotary_embedding_call_after_call(case):
    """Sequences of calls as generation makes them (a prompt, then one position at a time past
    the original length, then a short prompt again): the same cos and sin as transformers'
    rotary module, whose dynamic state carries over between calls."""
    params = CASES[case]
    config = hf_config(16, params, max_pos=MAX_POS if case == "dynamic" else 64)
    theirs = LlamaRotaryEmbedding(config)
    ours = ours_for(16, params)
    x = torch.zeros(1)
    original = MAX_POS if case == "dynamic" else params.get("original_max_position_embeddings", MAX_POS)
    calls = [torch.arange(original - 2).unsqueeze(0)]
    calls += [torch.tensor([[p]]) for p in range(original - 2, original + 6)]
    calls += [torch.arange(original + 10).expand(2, -1), torch.arange(5).unsqueeze(0), torch.tensor([[original + 3]])]
    for positions in calls:
        cos, sin = theirs(x, positions)
        our_cos, signed_sin = ours.tables(positions)
        half = ours.rot_dim // 2
        assert torch.equal(our_cos[:, 0], cos[:1] if positions.stride(0) == 0 else cos), positions
        assert torch.equal(signed_sin[:, 0, :, half:], (sin[:1] if positions.stride(0) == 0 else sin)[..., half:])


def test_attention_factor_scales_cos_and_sin_and_keeps_the_fast_path():
    yarn = RoPE(16, scaling={"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16})
    same_freq = RoPE(16)
    same_freq.inv_freq = yarn.inv_freq.clone()
    positions = torch.arange(9).expand(2, 9)
    factor = 0.1 * math.log(4.0) + 1
    assert yarn.attention_factor == pytest.approx(factor)
    for ours, unscaled in zip(yarn.tables(positions), same_freq.tables(positions)):
        torch.testing.assert_close(ours, unscaled * factor, rtol=1e-6, atol=1e-7)
    q = torch.randn(2, 3, 9, 16, requires_grad=True)
    rotated, _ = yarn.rotate(q, q, positions, positions)
    assert type(rotated.grad_fn).__name__.startswith("_Rotate")


def test_scaled_tables_are_cached_per_positions_tensor():
    rope = RoPE(16, scaling={"type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                             "original_max_position_embeddings": 16})
    positions = torch.arange(20).expand(2, 20)
    assert rope.tables(positions)[0] is rope.tables(positions)[0]


@pytest.mark.parametrize("scaling, message", [
    ({"type": "lama3", "factor": 8.0}, r"type 'lama3' is unknown \(did you mean 'llama3'\?\)"),
    ({"type": "yarn", "factor": 4.0}, r"type 'yarn' needs original_max_position_embeddings; add "
                                      r"original_max_position_embeddings: \.\.\. to position.scaling"),
    ({"type": "linear", "factr": 2.0}, r"has no parameter 'factr' \(did you mean 'factor'\?\)"),
    ({"type": "linear", "factor": 0}, r"factor must be a positive number"),
    ({"type": "longrope", "factor": 2.0, "original_max_position_embeddings": 16, "short_factor": [1.0] * 3,
      "long_factor": [1.0] * 8}, r"short_factor must be a list of 8 positive numbers"),
    ({"type": "llama3", "factor": 8.0, "low_freq_factor": 4.0, "high_freq_factor": 1.0,
      "original_max_position_embeddings": 16}, r"high_freq_factor \(1.0\) must be greater than low_freq_factor"),
    ({"factor": 2.0}, r"must be null or a mapping with a 'type'"),
])
def test_bad_scaling_is_one_config_error_naming_the_option_and_the_fix(scaling, message):
    with pytest.raises(ConfigError, match=r"position rope: scaling.*" + message):
        POSITIONS.build({"name": "rope", "scaling": scaling}, head_dim=16)


def test_sliding_layers_get_the_local_base_unscaled():
    scaling = {"type": "linear", "factor": 8.0}
    rope = RoPE(16, theta=1e6, fraction=0.5, interleaved=True, scaling=scaling, local_theta=10000.0)
    local = rope.for_sliding_layers()
    assert isinstance(local, RoPE) and local is not rope
    assert (local.theta, local.scaling, local.local_theta, local.rot_dim, local.interleaved) == (10000.0, None, None, 8, True)
    assert torch.equal(local.inv_freq, RoPE(16, theta=10000.0, fraction=0.5).inv_freq)
    assert rope.inv_freq[0] == 1.0 / 8  # the global layers keep the scaling
    assert RoPE(16, scaling=scaling).for_sliding_layers() is not None
    plain = RoPE(16, scaling=scaling)
    assert plain.for_sliding_layers() is plain
    assert PositionEncoding().for_sliding_layers().__class__ is PositionEncoding
    with pytest.raises(ConfigError, match="local_theta must be a positive number"):
        RoPE(16, local_theta=-1.0)


def test_learned_positions_with_an_offset_read_row_p_plus_offset():
    plain = LearnedAbsolute(8, 10)
    opt = LearnedAbsolute(8, 10, offset=2)
    assert opt.table.weight.shape == (12, 8) and plain.table.weight.shape == (10, 8)
    positions = torch.tensor([[0, 1, 2, 9]])
    x = torch.zeros(1, 4, 8)
    assert torch.equal(opt.embed(x, positions)[0], opt.table.weight[[2, 3, 4, 11]])
    with pytest.raises(ConfigError, match="beyond"):
        opt.embed(x, torch.tensor([[10]]))
    with pytest.raises(ConfigError, match="offset must be a non-negative integer"):
        LearnedAbsolute(8, 10, offset=-1)


def test_a_bad_scaling_in_a_config_file_is_one_line_and_exit_2(tmp_path, capsys):
    from llm_modules.cli import main

    path = tmp_path / "model.yaml"
    path.write_text("vocab_size: 64\nd_model: 32\nn_layers: 1\nn_heads: 2\n"
                    "position: {name: rope, scaling: {type: yarn, factor: 4.0}}\n")
    assert main(["estimate", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "position rope: scaling type 'yarn' needs original_max_position_embeddings" in err


def test_a_model_with_local_theta_rotates_its_sliding_layers_with_the_local_base_unscaled():
    from llm_modules import CausalLM, ModelConfig

    config = ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=2, max_seq_len=32, sliding_window=4,
                         layer_types=["sliding", "full"],
                         position={"name": "rope", "theta": 1e6, "local_theta": 1e4,
                                   "scaling": {"type": "linear", "factor": 8.0}})
    stack = CausalLM(config).model.stack
    assert (stack.sliding_position.theta, stack.sliding_position.scaling) == (1e4, None)
    assert (stack.position.theta, stack.position.scaling["type"]) == (1e6, "linear")
