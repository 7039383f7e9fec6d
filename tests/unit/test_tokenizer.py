"""Tokenizer: faithful round trips on code, LLaMA choices, stable special ids, and travel as bytes."""

from __future__ import annotations

import pickle

import pytest

from llm_modules.data.sources import stdlib_root
from llm_modules.data.tokenizer import Tokenizer
from llm_modules.registry import ConfigError

TRAIN_FILES = ["json/decoder.py", "json/encoder.py", "textwrap.py", "shlex.py", "colorsys.py"]
UNSEEN_FILES = ["json/scanner.py", "fnmatch.py", "bisect.py", "keyword.py"]


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return [str(stdlib_root() / f) for f in TRAIN_FILES]


@pytest.fixture(scope="module")
def tok(corpus, tmp_path_factory) -> Tokenizer:
    out = tmp_path_factory.mktemp("tok") / "tiny.model"
    return Tokenizer.train(corpus, out, vocab_size=420, num_sentinels=8)


def test_round_trip_on_unseen_source_code(tok):
    for name in UNSEEN_FILES:
        text = (stdlib_root() / name).read_text(encoding="utf-8")
        assert tok.decode(tok.encode(text)) == text, name


ODD = [
    "x = 1234567890\n",
    "\tif  a:\n\t\treturn  b  \n",  # tabs, doubled spaces, trailing spaces
    "   leading and trailing   ",
    "line one\r\nline two\r\n\n\n",  # CRLF and blank lines
    "\u00a0nbsp\u2003em space\u200bzero width\x0cform feed",
    "caf\u00e9 \u2603 \U0001d518 \u4e2d\u6587 \U0001f600",  # non-ASCII, astral plane
    "<mask> <extra_id_0> </s> <s> <pad>",  # special-token look-alikes in the text
    "",
]


@pytest.mark.parametrize("text", ODD)
def test_round_trip_unusual_whitespace_and_non_ascii(tok, text):
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert tok.unk_id not in ids  # byte fallback: no <unk> on any text


def test_non_ascii_falls_back_to_bytes(tok):
    pieces = [tok.id_to_piece(i) for i in tok.encode("\u2603")]
    assert pieces == ["<0xE2>", "<0x98>", "<0x83>"]


def test_digits_are_split(tok):
    ids = tok.encode("x = 2024")
    digits = [tok.id_to_piece(i) for i in ids if tok.id_to_piece(i).strip("\u2581").isdigit()]
    assert digits == ["2", "0", "2", "4"]


def test_special_ids_are_fixed_and_distinct(tok):
    assert (tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id, tok.mask_id) == (0, 1, 2, 3, 4)
    assert tok.sentinel_ids == list(range(5, 13))
    specials = [tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id, tok.mask_id, *tok.sentinel_ids]
    assert len(set(specials)) == len(specials)
    assert set(specials) == tok.special_ids
    assert [tok.id_to_piece(i) for i in (0, 1, 2, 3, 4, 5)] == ["<pad>", "<unk>", "<s>", "</s>", "<mask>", "<extra_id_0>"]


def test_special_tokens_cannot_be_forged_by_text(tok):
    ids = tok.encode("<mask> <extra_id_0> </s>")
    assert not set(ids) & tok.special_ids


def test_bos_eos_flags(tok):
    plain = tok.encode("abc")
    assert tok.encode("abc", bos=True, eos=True) == [tok.bos_id, *plain, tok.eos_id]
    assert tok.encode_batch(["abc", "d"], eos=True) == [plain + [tok.eos_id], tok.encode("d") + [tok.eos_id]]


def test_decode_can_show_special_tokens(tok):
    ids = [tok.sentinel_ids[0], *tok.encode("a b"), tok.sentinel_ids[1], tok.eos_id]
    assert tok.decode(ids) == "a b"
    assert tok.decode(ids, skip_special=False) == "<extra_id_0>a b<extra_id_1></s>"


def test_special_ids_agree_across_corpora_and_model_types(corpus):
    other = Tokenizer.train(iter([(stdlib_root() / "fnmatch.py").read_text()] * 3), vocab_size=400,
                            num_sentinels=8, model_type="unigram")
    assert (other.pad_id, other.unk_id, other.bos_id, other.eos_id, other.mask_id) == (0, 1, 2, 3, 4)
    assert other.sentinel_ids == list(range(5, 13))
    text = "def f(x):\n\treturn x  + 42  # caf\u00e9\n"
    assert other.decode(other.encode(text)) == text


def test_training_is_deterministic(corpus, tok):
    again = Tokenizer.train(corpus, vocab_size=420, num_sentinels=8)
    assert again.fingerprint == tok.fingerprint


def test_sentence_cap_samples_lines(corpus):
    small = Tokenizer.train(corpus, vocab_size=400, num_sentinels=2, max_sentences=200)
    text = "for i in range(10):\n    print(i)\n"
    assert small.decode(small.encode(text)) == text


def test_load_by_path_and_bytes(tok, tmp_path):
    path = tok.save(tmp_path / "copy.model")
    loaded = Tokenizer.load(path)
    assert loaded.fingerprint == tok.fingerprint
    assert loaded.source == str(path)
    restored = Tokenizer.from_bytes(tok.to_bytes())
    assert restored.fingerprint == tok.fingerprint
    assert restored.encode("print(1)") == tok.encode("print(1)")
    assert restored.sentinel_ids == tok.sentinel_ids
    unpickled = pickle.loads(pickle.dumps(tok))
    assert unpickled.fingerprint == tok.fingerprint and unpickled.mask_id == tok.mask_id


def test_train_out_path_gets_model_suffix(corpus, tmp_path):
    Tokenizer.train(corpus, tmp_path / "named", vocab_size=400, num_sentinels=2)
    assert (tmp_path / "named.model").is_file()


def test_lines_encode_independently(tok):
    assert tok.lines_encode_independently
    text = "a = 1\n\n    b = 'x'\n\tc\n"
    lines = [line + "\n" for line in text.split("\n")[:-1]]
    assert [i for line in lines for i in tok.encode(line)] == tok.encode(text)


def test_vocab_too_small_names_the_field(corpus):
    with pytest.raises(ConfigError, match=r"data\.vocab_size=300 is too small.*at least \d+"):
        Tokenizer.train(corpus, vocab_size=300, num_sentinels=4, field="data.vocab_size")
    with pytest.raises(ConfigError, match="vocab_size=200 is too small"):
        Tokenizer.train(corpus, vocab_size=200)


def test_vocab_too_large_names_the_bound(tmp_path):
    with pytest.raises(ConfigError, match=r"vocab_size=5000 is too large.*at most \d+"):
        Tokenizer.train(iter(["tiny text only\n"] * 10), vocab_size=5000, num_sentinels=2)


def test_bad_inputs(tmp_path, corpus):
    with pytest.raises(ConfigError, match="data.tokenizer: .*does not exist.*SentencePiece .model"):
        Tokenizer.load(tmp_path / "missing.model", field="data.tokenizer")
    junk = tmp_path / "junk.model"
    junk.write_bytes(b"not a model")
    with pytest.raises(ConfigError, match="is not a SentencePiece model"):
        Tokenizer.load(junk)
    with pytest.raises(ConfigError, match="model_type 'wordpiece'.*choices: bpe, unigram"):
        Tokenizer.train(corpus, vocab_size=400, model_type="wordpiece")
    with pytest.raises(ConfigError, match="no text"):
        Tokenizer.train(iter(["   \n\n"]), vocab_size=400)
