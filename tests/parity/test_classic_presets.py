"""The published presets of GPT-NeoX (Pythia), OLMo 2, Falcon and OPT are those models: importing the
published config.json values (``PUBLISHED`` of tests/family_models) gives the preset's architecture,
and the preset exports those values (tests/parity/test_families.py checks their parameter counts)."""

from __future__ import annotations

import pytest

from llm_modules import ModelConfig
from llm_modules.interop import HF_FAMILIES
from llm_modules.interop.slots import component

from family_models import family_modules

CLASSIC = ("gpt_neox", "olmo2", "falcon", "opt")
CASES = [(m.MODEL_TYPE, preset, values) for name, m in family_modules().items() if name in CLASSIC
         for preset, values in m.PUBLISHED.items()]
#: what the preset leaves to the run (the backend) or to its tokenizer (the special ids)
NOT_ARCHITECTURE = ("attention", "pad_token_id", "bos_token_id", "eos_token_id")


def built(config: ModelConfig) -> dict:
    """Each slot as the model is built with it (spelling aside), and every other field."""
    data = config.to_dict()
    for slot in ("norm", "residual", "activation", "position"):
        data[slot] = component(config, slot)
    return {k: v for k, v in data.items() if k not in NOT_ARCHITECTURE}


@pytest.mark.parametrize("model_type, preset, values", CASES, ids=[c[1] for c in CASES])
def test_published_config_imports_as_the_preset_and_back(model_type, preset, values):
    family = HF_FAMILIES.get(model_type).factory()
    hf = {k: v for k, v in values.items() if k != "model_type"}
    ours = ModelConfig.from_preset(preset)
    assert built(family.config_from_hf(hf)) == built(ours)
    exported = family.config_to_hf(ours)
    written = [key for key in hf if key in exported and key not in NOT_ARCHITECTURE]
    assert len(written) >= 8, written
    for key in written:
        assert exported[key] == hf[key], key
