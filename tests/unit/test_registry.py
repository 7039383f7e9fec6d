"""The component registry and ModelConfig's checks.

Configs store plain data, so every mistake a person can type (a misspelt name, an option the
component does not have, a head count that does not divide the width) must come back as a
ConfigError that names the field and the fix, at build time, never as a silent default.
"""

from __future__ import annotations

import pytest
import torch
import yaml
from torch import nn

from _core_helpers import build, tiny_config
from llm_modules import ACTIVATIONS, ATTENTIONS, NORMS, POSITIONS, RESIDUALS, CausalLM, ConfigError, ModelConfig
from llm_modules.nn.norms import LayerNorm, RMSNorm, ScaleNorm
from llm_modules.cli.registry_cmd import catalogue
from llm_modules.registry import MODEL_REGISTRIES, REGISTRIES, Registry, split_spec


# ---- registration ------------------------------------------------------------------------------------------


def test_decorator_registers_class_and_factory_and_returns_them_unchanged():
    reg = Registry("norm")

    @reg.register("mine")
    class Mine(nn.Module):
        """My norm."""

        def __init__(self, dim: int):
            super().__init__()
            self.dim = dim

    @reg.register("fn")
    def make(dim: int, gain: float = 2.0):
        """A factory."""
        return ("made", dim, gain)

    assert Mine.__name__ == "Mine" and callable(make)  # the decorator hands back what it wrapped
    assert reg.names() == ["fn", "mine"]
    assert reg.build("mine", dim=7).dim == 7
    assert reg.build({"name": "fn", "gain": 3.0}, dim=4) == ("made", 4, 3.0)
    assert reg.get("mine").doc == "My norm."
    assert "mine" in reg and "MINE" in reg and "other" not in reg


def test_registration_rejects_bad_and_duplicate_names():
    reg = Registry("norm")
    with pytest.raises(ValueError, match="lowercase"):
        reg.register("RMSNorm")
    with pytest.raises(ValueError, match="lowercase"):
        reg.register("has space")
    reg.register("a")(RMSNorm)
    reg.register("a")(RMSNorm)  # the same factory again is harmless (module re-import)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a")(ScaleNorm)
    reg.unregister("a")
    assert "a" not in reg


def test_global_registration_is_visible_to_model_configs():
    """A component registered at run time is usable by name in a config, then removed cleanly."""

    @NORMS.register("test-double-norm")
    class DoubleNorm(nn.Module):
        """Doubles its input (a test norm)."""

        def __init__(self, dim: int):
            super().__init__()

        def forward(self, x):
            return 2 * x

    try:
        lm = build("CausalLM", norm="test-double-norm")
        assert any(isinstance(m, DoubleNorm) for m in lm.modules())
    finally:
        NORMS.unregister("test-double-norm")
    with pytest.raises(ConfigError, match="unknown norm 'test-double-norm'"):
        tiny_config(norm="test-double-norm").validate()


# ---- slot values ---------------------------------------------------------------------------------------------


def test_slot_value_is_a_name_or_a_mapping():
    assert split_spec("RMSNorm ", "norm") == ("rmsnorm", {})
    assert split_spec({"name": "rmsnorm", "eps": 1e-6}, "norm") == ("rmsnorm", {"eps": 1e-6})
    with pytest.raises(ConfigError, match=r"norm: a mapping needs a 'name' key"):
        split_spec({"eps": 1e-6}, "norm")
    with pytest.raises(ConfigError, match=r"norm: expected a component name"):
        split_spec(3, "norm")


def test_mapping_options_reach_the_component_and_override_model_supplied_values():
    norm = NORMS.build({"name": "rmsnorm", "eps": 1e-3}, dim=8, eps=1e-5)
    assert isinstance(norm, RMSNorm) and norm.eps == 1e-3
    ln = NORMS.build({"name": "layernorm", "bias": False}, dim=8, eps=1e-5)
    assert isinstance(ln, LayerNorm) and ln.bias is None
    # The model supplies more than a component needs; only what its signature names is passed on.
    scale = NORMS.build("scalenorm", dim=16, eps=1e-5, n_heads=4, unrelated=object())
    assert scale.scale.item() == pytest.approx(4.0)


def test_a_factory_gets_the_arguments_it_names_when_built_again_and_when_it_is_unhashable():
    """The names a factory takes are read once per factory; a callable object that cannot be a
    cache key (``__eq__`` without ``__hash__``) is read each time, with the same result."""
    class Unhashable:
        def __eq__(self, other):
            return self is other

        def __call__(self, dim: int, eps: float = 1e-5) -> nn.Module:
            return RMSNorm(dim, eps)

    registry = Registry("scratch", "a registry of this test's own")
    registry.register("unhashable")(Unhashable())
    registry.register("plain")(lambda dim: nn.Linear(dim, dim))
    for _ in range(2):
        assert registry.build("unhashable", dim=8, eps=1e-3, n_heads=4).eps == 1e-3
        assert registry.build("plain", dim=8, eps=1e-3, n_heads=4).in_features == 8


def test_unknown_option_names_slot_option_and_closest_match():
    with pytest.raises(ConfigError) as err:
        NORMS.validate({"name": "rmsnorm", "epsilon": 1e-6})
    text = str(err.value)
    assert text.startswith("norm 'rmsnorm' has no option 'epsilon' (did you mean 'eps'?)")
    assert "dim, eps" in text
    with pytest.raises(ConfigError, match=r"position 'rope' has no option 'thetta' \(did you mean 'theta'\?\)"):
        tiny_config(position={"name": "rope", "thetta": 5e5}).validate()
    with pytest.raises(ConfigError, match=r"activation 'moe' has no option 'experts'"):
        CausalLM(tiny_config(activation={"name": "moe", "experts": 4}))


def test_unknown_name_error_text_is_exact():
    reg = Registry("norm")
    for name, cls in (("layernorm", LayerNorm), ("rmsnorm", RMSNorm), ("scalenorm", ScaleNorm)):
        reg.register(name)(cls)
    with pytest.raises(ConfigError) as err:
        reg.get("rmsnrom")
    assert str(err.value) == "unknown norm 'rmsnrom' (did you mean 'rmsnorm'?); choices: layernorm, rmsnorm, scalenorm"
    # The global registry says the same, listing whatever is registered (plugins may add names).
    with pytest.raises(ConfigError) as err:
        tiny_config(norm="rmsnrom").validate()
    assert str(err.value) == f"unknown norm 'rmsnrom' (did you mean 'rmsnorm'?); choices: {', '.join(NORMS.names())}"
    assert {"layernorm", "rmsnorm", "scalenorm"} <= set(NORMS.names())
    # No close match: no hint, but still every choice.
    with pytest.raises(ConfigError) as err:
        ATTENTIONS.get("zzzzzz")
    assert str(err.value).startswith("unknown attention 'zzzzzz'; choices: ") and "eager" in str(err.value)


def test_a_bad_option_value_is_a_config_error():
    with pytest.raises(ConfigError, match="approximate"):
        ACTIVATIONS.build({"name": "gelu", "approximate": "fast"}, d_model=8)
    with pytest.raises(ConfigError, match="rotary dims"):
        POSITIONS.build({"name": "rope", "fraction": 0.375}, head_dim=8)  # 3 rotary dims: odd
    with pytest.raises(ConfigError, match=r"fraction must be in \(0, 1\]"):
        POSITIONS.build({"name": "rope", "fraction": 1.5}, head_dim=8)


def test_every_registered_name_is_listed_with_a_doc_and_its_provider():
    """Read from the registries themselves (no list of names here): every slot has built-ins, every
    name a one-line doc, and the provider is the top-level package of the code that registered it."""
    cat = catalogue()
    assert set(REGISTRIES) == {"norm", "residual", "activation", "position", "attention", "peft"}
    # the model's architecture slots (fields of ModelConfig); fine-tuning methods are not one of them
    assert set(MODEL_REGISTRIES) == {"norm", "residual", "activation", "position", "attention"}
    for slot, registry in REGISTRIES.items():
        entries = {e["name"]: e for e in cat[slot]}
        assert list(entries) == registry.names(), slot
        assert any(e["provider"] == "llm_modules" for e in entries.values()), f"{slot} has no built-in"
        for name, entry in entries.items():
            assert entry["doc"], f"{slot} {name} has no one-line doc"
            module = registry.get(name).factory.__module__
            assert entry["provider"] == module.split(".")[0], (slot, name, module)
    # the example plugin's components (installed for the tests) are listed and credited
    assert cat["norm"][[e["name"] for e in cat["norm"]].index("dyt")]["provider"] == "llm_modules_example"
    assert RESIDUALS is REGISTRIES["residual"]


# ---- ModelConfig -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"d_model": 30, "n_heads": 4}, r"n_heads=4 does not divide d_model=30"),
        ({"n_heads": 4, "n_kv_heads": 3}, r"n_kv_heads=3 must divide n_heads=4"),
        ({"n_heads": 4, "n_kv_heads": 8}, r"n_kv_heads=8 must divide n_heads=4"),
        ({"vocab_size": 0}, r"vocab_size must be a positive integer"),
        ({"n_layers": 2.5}, r"n_layers must be a positive integer"),
        ({"d_ff": -1}, r"d_ff must be a positive integer or null"),
        ({"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
        ({"embedding_grad_scale": 0.0}, r"embedding_grad_scale must be in \(0, 1\]"),
        ({"pad_token_id": 50}, r"pad_token_id=50 must be a token id below vocab_size=50"),
        ({"n_encoder_layers": -1}, r"n_encoder_layers must be >= 0"),
        ({"residual": "sandwhich"}, r"unknown residual 'sandwhich' \(did you mean 'sandwich'\?\)"),
        ({"activation": "swiglue"}, r"unknown activation 'swiglue' \(did you mean 'swiglu'\?\)"),
    ],
)
def test_model_config_errors_name_the_field(fields, message):
    with pytest.raises(ConfigError, match=message):  # a config is checked as it is made
        tiny_config(**fields)
    with pytest.raises(ConfigError, match=message):  # and when changed
        tiny_config().replace(**fields)
    with pytest.raises(ConfigError, match=message):  # and when a model is built from its plain data
        CausalLM({**tiny_config().to_dict(), **fields})


def test_explicit_head_dim_lifts_the_divisibility_rule():
    lm = build("CausalLM", d_model=30, n_heads=4, head_dim=8)
    attn = lm.model.stack.layers[0].attn
    assert attn.q.weight.shape == (32, 30) and attn.o.weight.shape == (30, 32)
    assert lm(torch.randint(0, 50, (1, 5))).shape == (1, 5, 50)


def test_unknown_config_field_and_yaml_round_trip(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown model config field 'n_layer' \(did you mean 'n_layers'\?\)"):
        ModelConfig.from_dict({"n_layer": 2})
    cfg = tiny_config(norm={"name": "rmsnorm", "eps": 1e-6}, position={"name": "rope", "theta": 500000.0})
    path = tmp_path / "model.yaml"
    cfg.to_yaml(path)
    back = ModelConfig.from_file(path)
    assert back == cfg and yaml.safe_load(path.read_text())["norm"] == {"name": "rmsnorm", "eps": 1e-6}
