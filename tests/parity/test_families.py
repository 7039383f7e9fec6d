"""What every Hugging Face family must do, checked on each family's tiny random model
(``tests/family_models``): logits equal to transformers' on a padded batch through ``from_hf`` and
again after ``to_hf``; greedy and 4-beam generation ids equal to transformers' ``generate`` on three
left-padded prompts of different lengths; and the published sizes' parameter counts equal.
"""

from __future__ import annotations

import pytest
import torch

import transformers  # noqa: E402  (a dev dependency: the oracle these tests compare against)

import llm_modules  # noqa: E402
from llm_modules import ModelConfig  # noqa: E402
from llm_modules.generation import generate  # noqa: E402
from llm_modules.models import KINDS  # noqa: E402

from family_models import family_modules  # noqa: E402
from hf_helpers import assert_round_trip, right_padded  # noqa: E402

FAMILIES = family_modules()
VOCAB = 97
PAD = 1  # not 0: transformers' beam search fills finished rows with EOS when pad_token_id is 0
NEW = 10


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request, tmp_path_factory):
    """(family module, transformers model, our module from its saved folder)."""
    module = FAMILIES[request.param]
    torch.manual_seed(0)
    hf = module.build(VOCAB)
    path = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(path)
    return module, hf, llm_modules.from_hf(path)


def test_from_hf_and_to_hf_keep_the_logits(family, tmp_path):
    module, hf, _ = family
    batch = right_padded(VOCAB, [9, 5, 7], seed=3)
    ours = assert_round_trip(hf, tmp_path, batch, batch["attention_mask"], transformers.AutoModelForCausalLM)
    assert (tmp_path / "exported" / "config.json").read_text().count(f'"model_type": "{module.MODEL_TYPE}"') == 1
    assert ours.model.training is False


def left_padded_prompts() -> tuple[torch.Tensor, torch.Tensor]:
    """Three prompts of lengths 7, 4 and 2, left-padded."""
    ids = torch.randint(3, VOCAB, (3, 7), generator=torch.Generator().manual_seed(1))
    mask = (torch.arange(7).unsqueeze(0) >= 7 - torch.tensor([7, 4, 2]).unsqueeze(1)).long()
    return ids.masked_fill(mask == 0, PAD), mask


@pytest.mark.parametrize("beams", [1, 4], ids=["greedy", "beam4"])
def test_generation_matches_transformers(family, beams):
    module, hf, ours = family
    ids, mask = left_padded_prompts()
    free = generate(ours, ids, mask, max_new_tokens=NEW, pad_token_id=PAD, eos_token_id=[], num_beams=beams)
    values, counts = free[:, -NEW + 2:].unique(return_counts=True)
    stop = values[counts.argmax()].item()  # a token the model emits after a few steps: rows stop early
    for eos in ([], [stop]):
        with torch.no_grad():
            expected = hf.generate(ids, attention_mask=mask, max_new_tokens=NEW, pad_token_id=PAD,
                                   eos_token_id=eos or None, do_sample=False, num_beams=beams)
        got = generate(ours, ids, mask, max_new_tokens=NEW, pad_token_id=PAD, eos_token_id=eos, num_beams=beams)
        assert torch.equal(got, expected), f"{module.MODEL_TYPE} eos {eos}:\nours {got.tolist()}\nhf   {expected.tolist()}"


PUBLISHED = [(name, preset, hf_config) for name, m in FAMILIES.items() for preset, hf_config in m.PUBLISHED.items()]


@pytest.mark.parametrize("family_name, preset, hf_config", PUBLISHED, ids=[p[1] for p in PUBLISHED])
def test_published_preset_has_the_published_parameter_count(family_name, preset, hf_config):
    """Both models built on the meta device: the counts are exact, and nothing is allocated. Ours skips
    the initializers' value writes (``skip_init``), which change no shape: on meta each runs torch's
    Python reference kernel, 20 s for the 18,000 expert weights of qwen3-moe-30b-a3b."""
    from llm_modules.estimate.trace import skip_init

    settings = dict(hf_config)
    config = transformers.AutoConfig.for_model(settings.pop("model_type"), **settings)
    with torch.device("meta"):
        theirs = transformers.AutoModelForCausalLM.from_config(config)
    with skip_init(), torch.device("meta"):
        ours = KINDS["CausalLM"](ModelConfig.from_preset(preset))
    count = lambda m: sum(p.numel() for p in {id(p): p for p in m.parameters()}.values())  # noqa: E731
    assert count(ours) == count(theirs), f"{preset}: {count(ours):,} parameters, {family_name} has {count(theirs):,}"
