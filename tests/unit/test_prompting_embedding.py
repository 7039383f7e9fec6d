"""``model_embedder``: a text's vector is the mean of the model's final hidden states over its real
tokens (decoders: the stack's output; encoder-decoders: the encoder's), the same whatever batch it is
embedded in, and it drives embedding selection."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from _core_helpers import tiny_config
from llm_modules import CausalLM, Seq2SeqLM
from llm_modules.evaluation.prompting import model_embedder
from llm_modules.evaluation.prompting.selection import EmbeddingSimilarity, nearest
from llm_modules.registry import ConfigError


class CharTokenizer:
    eos_id = 2

    def encode(self, text):
        return [3 + ord(c) % 40 for c in text]


@pytest.mark.parametrize("kind", [CausalLM, Seq2SeqLM])
def test_vectors_are_masked_means_of_the_final_hidden_states(kind):
    torch.manual_seed(0)
    lm = kind(tiny_config())
    embed = model_embedder(lm, tokenizer=CharTokenizer(), batch_size=2)
    texts = ["ab", "a longer text", "", "zz top"]
    vectors = embed(texts)
    assert vectors.shape == (4, lm.config.d_model) and lm.training  # the model's mode is left as it was
    states = lm.model.hidden if kind is CausalLM else lm.model.encode
    lm.eval()
    with torch.no_grad():
        ids = torch.tensor([CharTokenizer().encode("a longer text")])
        expected = states(ids).mean(1)[0]
        alone = [embed([t])[0] for t in texts]
    assert torch.allclose(vectors[1], expected, atol=1e-5)
    assert torch.allclose(vectors, torch.stack(alone), atol=1e-5)  # padding never enters a mean


def test_an_lm_eval_model_is_embedded_through_its_module_and_drives_selection():
    torch.manual_seed(0)
    module = CausalLM(tiny_config())
    lm = SimpleNamespace(module=module, tokenizer=CharTokenizer(), max_length=8)  # LLMModulesLM's attributes
    embed = model_embedder(lm)
    assert torch.allclose(embed(["abcdefgh" + "x" * 20]), embed(["abcdefgh"]), atol=1e-6)  # max_length cuts
    pool = ["hello world", "qqqq", "hello world!"]
    sim = EmbeddingSimilarity(pool, embed)
    assert nearest(sim.query("hello world", range(3)), 1) == [0]
    with pytest.raises(ConfigError, match="needs the model.s tokenizer; this model carries none"):
        model_embedder(CausalLM(tiny_config()))


def test_the_llm_modules_lm_eval_model_embeds_with_its_own_tokenizer(tmp_path):
    pytest.importorskip("lm_eval")
    from _hf_tokenizer_helpers import write_tokenizer
    from llm_modules.data.hf_tokenizer import folder_tokenizer_bytes
    from llm_modules.evaluation.lm_eval_model import LLMModulesLM

    torch.manual_seed(0)
    module = CausalLM(tiny_config(vocab_size=320))
    module.tokenizer_bytes = folder_tokenizer_bytes(write_tokenizer(tmp_path))
    lm = LLMModulesLM(module=module, batch_size=2)
    vectors = model_embedder(lm)(["Hello world!", "The quick brown fox."])
    ids = torch.tensor([lm.tok_encode("The quick brown fox.")])
    with torch.no_grad():
        expected = module.model.hidden(ids).mean(1)[0]
    assert vectors.shape == (2, 32) and torch.allclose(vectors[1], expected, atol=1e-5)
