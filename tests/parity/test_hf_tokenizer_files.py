"""A Hugging Face folder's tokenizer.json, tokenizer_config.json (chat template) and
generation_config.json (a list of EOS ids) against transformers: the same ids, the same stops, and
an export that AutoTokenizer and GenerationConfig load equal to the originals."""

from __future__ import annotations

import json
import pickle

import pytest
import torch

import llm_modules
from llm_modules.cli import main
from llm_modules.data.hf_tokenizer import HFTokenizer, load_tokenizer, tokenizer_from_bytes

from _hf_tokenizer_helpers import BOS, EOS, EOT, eos_list, write_llama_folder

TEXTS = ["Hello world!", "The quick brown fox.", f"{BOS}hi{EOT} there{EOS}", "  spaced\n\nlines 123 \t{x}",
         "caf\u00e9 \u4e2d\u6587 \U0001f600", ""]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """The tiny folder, its lm_head made to pick the end-of-turn token (the list's second EOS) first."""
    from transformers import LlamaForCausalLM

    path = write_llama_folder(tmp_path_factory.mktemp("hf") / "llama")
    model = LlamaForCausalLM.from_pretrained(path).eval()
    prompt = torch.tensor([load_tokenizer(path / "tokenizer.json").encode_prompt("Hello world!")])
    with torch.no_grad():
        hidden = model.model(prompt).last_hidden_state[0, -1]
        model.lm_head.weight[eos_list(path)[1]] = 50 * hidden / hidden.norm()
    model.save_pretrained(path)
    return path


def test_ids_are_transformers_ids(folder):
    from transformers import AutoTokenizer

    theirs, ours = AutoTokenizer.from_pretrained(folder), load_tokenizer(folder / "tokenizer.json")
    for text in TEXTS:
        assert ours.encode(text) == theirs(text, add_special_tokens=False)["input_ids"], text
        assert ours.encode_prompt(text) == theirs(text)["input_ids"], text
        ids = theirs(text)["input_ids"]
        assert ours.decode(ids) == theirs.decode(ids, skip_special_tokens=True), text
    for name in ("bos", "eos", "unk"):
        assert (getattr(ours, f"{name}_id") if getattr(ours, f"{name}_id") >= 0 else None) == \
            getattr(theirs, f"{name}_token_id"), name
    assert theirs.pad_token_id is None and ours.pad_id == ours.eos_id  # no pad token: batches pad with EOS
    assert ours.vocab_size == len(theirs) and ours.special_ids >= set(theirs.all_special_ids)


def test_the_bundle_carries_everything_the_folder_says(folder):
    ours = load_tokenizer(folder / "tokenizer.json")
    again = tokenizer_from_bytes(ours.to_bytes())
    assert isinstance(again, HFTokenizer) and again.to_bytes() == ours.to_bytes()
    assert again.fingerprint == ours.fingerprint
    assert [again.encode(t) for t in TEXTS] == [ours.encode(t) for t in TEXTS]
    assert again.chat_template == json.loads((folder / "tokenizer_config.json").read_text())["chat_template"]
    assert again.generation["eos_token_id"] == eos_list(folder) and again.eos_id == eos_list(folder)[1]
    assert pickle.loads(pickle.dumps(again)).to_bytes() == ours.to_bytes()
    assert again.encode_batch(TEXTS[:3]) == [ours.encode(t) for t in TEXTS[:3]]


def carrying(folder):
    """The folder as a module whose checkpoint would carry its tokenizer (as init_from gives it)."""
    module = llm_modules.from_hf(folder)
    module.tokenizer_bytes = load_tokenizer(folder / "tokenizer.json").to_bytes()
    return module


def test_generate_stops_at_any_eos_of_the_generation_config(folder):
    from transformers import LlamaForCausalLM

    module = carrying(folder)
    first, second = eos_list(folder)
    assert module.config.eos_token_id == first  # config.json names one; generation_config.json both
    prompt = torch.tensor([module.tokenizer.encode_prompt("Hello world!")])
    out = module.generate(prompt, max_new_tokens=6)
    assert out[0, prompt.shape[1]:].tolist() == [second]  # stopped at the list's second EOS
    hf = LlamaForCausalLM.from_pretrained(folder).eval()
    assert out.tolist() == hf.generate(prompt, max_new_tokens=6).tolist()
    longer = module.generate(prompt, max_new_tokens=6, eos_token_id=[first])
    assert longer.shape[1] == prompt.shape[1] + 6  # only the config's EOS: it goes on


def test_generate_cli_stops_at_the_list_on_a_folder(folder, tmp_path, capsys):
    assert main(["generate", str(folder), "--prompt", "Hello world!", "--max-new-tokens", "6"]) == 0
    record = capsys.readouterr().out
    assert main(["generate", str(folder), "--prompt", "Hello world!", "--max-new-tokens", "6", "--output",
                 str(tmp_path / "out.jsonl")]) == 0
    tokens = json.loads((tmp_path / "out.jsonl").read_text())["tokens"]
    assert tokens == [eos_list(folder)[1]], record


def test_export_writes_tokenizer_chat_template_and_eos_list_back(folder, tmp_path):
    from transformers import AutoTokenizer, GenerationConfig

    out = llm_modules.to_hf(carrying(folder), tmp_path / "exported")
    theirs, again = AutoTokenizer.from_pretrained(folder), AutoTokenizer.from_pretrained(out)
    for text in TEXTS:
        assert again(text)["input_ids"] == theirs(text)["input_ids"], text
    assert again.chat_template == theirs.chat_template and again.chat_template
    assert (again.bos_token, again.eos_token, again.all_special_tokens) == \
        (theirs.bos_token, theirs.eos_token, theirs.all_special_tokens)
    messages = [{"role": "user", "content": "Hello world!"}, {"role": "assistant", "content": "Hello tokens."}]
    assert again.apply_chat_template(messages) == theirs.apply_chat_template(messages)
    original, written = GenerationConfig.from_pretrained(folder), GenerationConfig.from_pretrained(out)
    assert written.eos_token_id == original.eos_token_id == eos_list(folder)
    assert written.bos_token_id == original.bos_token_id


def test_generate_cli_decodes_as_the_generation_config_says_under_the_flags(tmp_path):
    from llm_modules.generation.defaults import decoding

    folder = write_llama_folder(tmp_path / "sampling", seed=1)
    settings = json.loads((folder / "generation_config.json").read_text())
    settings.update(do_sample=True, temperature=0.7, top_p=0.9, max_new_tokens=5)
    (folder / "generation_config.json").write_text(json.dumps(settings))
    module = carrying(folder)
    assert decoding(module) == {"max_new_tokens": 5, "do_sample": True, "temperature": 0.7, "top_k": 50, "top_p": 0.9}
    prompt = torch.tensor([module.tokenizer.encode_prompt("Hello world!")])

    def cli(*flags):
        out = tmp_path / "out.jsonl"
        assert main(["generate", str(folder), "--prompt", "Hello world!", "--output", str(out), "--overwrite",
                     *flags]) == 0
        return json.loads(out.read_text())["tokens"]

    def ours(**options):
        row = module.generate(prompt, **options)[0, prompt.shape[1]:].tolist()
        return [t for t in row if t != module.config.pad_token_id][:next(
            (i + 1 for i, t in enumerate(row) if t in eos_list(folder)), len(row))]

    sampled = cli("--seed", "3")
    assert sampled == ours(max_new_tokens=5, do_sample=True, temperature=0.7, top_k=50, top_p=0.9, seed=3)
    assert cli("--greedy") == ours(max_new_tokens=5) != sampled  # the model samples; --greedy does not
    assert len(cli("--greedy", "--max-new-tokens", "2")) <= 2
    assert cli("--seed", "3", "--temperature", "0.1") == ours(max_new_tokens=5, do_sample=True, temperature=0.1,
                                                               top_k=50, top_p=0.9, seed=3)


def test_a_folder_generation_config_counts_whatever_tokenizer_reads_the_prompt(folder, tmp_path):
    """--tokenizer from elsewhere (here: the same tokenizer.json without the files beside it): the
    folder's own generation_config.json still says where generation stops."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "tokenizer.json").write_bytes((folder / "tokenizer.json").read_bytes())
    out = tmp_path / "out.jsonl"
    assert main(["generate", str(folder), "--prompt", "Hello world!", "--max-new-tokens", "6",
                 "--tokenizer", str(elsewhere / "tokenizer.json"), "--output", str(out)]) == 0
    assert json.loads(out.read_text())["tokens"] == [eos_list(folder)[1]]


def test_a_damaged_bundle_is_one_line():
    from llm_modules.registry import ConfigError

    for data in (b'{"format": "llm-modules/hf-tokenizer"}', b"{not json", b'{"format": "other"}'):
        with pytest.raises(ConfigError, match="not a tokenizer bundle"):
            tokenizer_from_bytes(data)
