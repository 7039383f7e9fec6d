"""InstructionDataModule: worked examples of the loss mask per kind (token ids written out by hand with
a tokenizer whose ids are known), chat records, templates, truncation, packing, errors, and a fit on
the tiny instruction set that ships with the tests."""

from __future__ import annotations

import importlib.util
import json
import logging
import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from _fit_helpers import metric_rows
from sentencepiece import sentencepiece_model_pb2 as spm_pb

from llm_modules import CausalLM, ModelConfig
from llm_modules.cli import main
from llm_modules.data import InstructionDataModule, Tokenizer
from llm_modules.data.instruction_format import BUILTIN_TEMPLATES, format_record, resolve_template
from llm_modules.data.instructions import fit_decoder
from llm_modules.data.pairs import PairCollator, decoder_labels
from llm_modules.registry import ConfigError

TINY = Path(__file__).parents[1] / "data" / "instructions"
X = -100  # IGNORE_INDEX, short for the tables below

# ---- a tokenizer whose ids are known: one piece per character --------------------------------------------
# 0 <pad>  1 <unk>  2 <s>  3 </s>  4 <mask>  5 <extra_id_0>  then the characters from 6 on
CHARS = ["a", "b", "c", "d", "\u2581", "\n", ">", ":"]  # "\u2581" is SentencePiece's space
A, B, C, D, SP, NL, GT, COLON = range(6, 14)
EOS, PAD = 3, 0
TEMPLATE = {"prompt": ">{instruction}:{input}\n", "prompt_no_input": ">{instruction}\n", "user": ">{content}\n"}


@pytest.fixture(scope="module")
def char_tok(tmp_path_factory) -> Path:
    proto = spm_pb.ModelProto()
    piece = spm_pb.ModelProto.SentencePiece
    for name, kind in [("<pad>", piece.CONTROL), ("<unk>", piece.UNKNOWN), ("<s>", piece.CONTROL),
                       ("</s>", piece.CONTROL), ("<mask>", piece.CONTROL), ("<extra_id_0>", piece.CONTROL)]:
        proto.pieces.add(piece=name, type=kind, score=0.0)
    for char in CHARS:
        proto.pieces.add(piece=char, type=piece.NORMAL, score=-1.0)
    proto.trainer_spec.model_type = spm_pb.TrainerSpec.UNIGRAM
    proto.trainer_spec.pad_id, proto.trainer_spec.unk_id, proto.trainer_spec.bos_id, proto.trainer_spec.eos_id = 0, 1, 2, 3
    proto.normalizer_spec.name = "identity"
    proto.normalizer_spec.add_dummy_prefix = False
    proto.normalizer_spec.remove_extra_whitespaces = False
    path = tmp_path_factory.mktemp("chartok") / "chars.model"
    Tokenizer.from_bytes(proto.SerializeToString()).save(path)
    return path


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def val_batch(tok: Path, data: Path, kind: str, **options) -> dict:
    """The first validation batch (records in file order)."""
    dm = InstructionDataModule(val_paths=[str(data)], tokenizer=str(tok), kind=kind, template=options.pop("template", TEMPLATE),
                               max_len=options.pop("max_len", 32), min_response_len=options.pop("min_response_len", 1),
                               **options)
    dm.setup("validate")
    return next(iter(dm.val_dataloader()))


# ---- the worked example -----------------------------------------------------------------------------------

RECORDS = [{"instruction": "ab", "output": "cd"}, {"instruction": "a", "input": "b", "output": "dc"}]
# ">ab\n" + "cd" + EOS and ">a:b\n" + "dc" + EOS
ROWS = [[GT, A, B, NL, C, D, EOS, PAD],
        [GT, A, COLON, B, NL, D, C, EOS]]
# position t is scored on token t+1: exactly where the next token is a response token or the EOS
LABELS = [[X, X, X, C, D, EOS, X, X],
          [X, X, X, X, D, C, EOS, X]]


def test_the_tokenizer_is_one_piece_per_character(char_tok):
    tok = Tokenizer.load(char_tok)
    assert tok.encode(">a:b\ncd") == [GT, A, COLON, B, NL, C, D] and tok.eos_id == EOS and tok.pad_id == PAD


@pytest.mark.parametrize("kind", ["CausalLM", "PrefixLM"])
def test_decoder_kinds_score_exactly_the_response_and_eos(kind, char_tok, tmp_path):
    batch = val_batch(char_tok, write_jsonl(tmp_path / "two.jsonl", RECORDS), kind)
    assert batch["input_ids"].tolist() == ROWS
    assert batch["attention_mask"].tolist() == [[1] * 7 + [0], [1] * 8]
    assert batch["labels"].tolist() == LABELS
    if kind == "PrefixLM":
        assert batch["prefix_lengths"].tolist() == [4, 5]  # the prompt is the prefix
    # generation inputs: the prompts left-padded, the references as written
    assert batch["prompt_ids"].tolist() == [[PAD, GT, A, B, NL], [GT, A, COLON, B, NL]]
    assert batch["references"] == ["cd", "dc"]


def test_seq2seq_encodes_the_prompt_and_decodes_the_response(char_tok, tmp_path):
    batch = val_batch(char_tok, write_jsonl(tmp_path / "two.jsonl", RECORDS), "Seq2SeqLM")
    assert batch["input_ids"].tolist() == [[GT, A, B, NL, PAD], [GT, A, COLON, B, NL]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 0], [1] * 5]
    assert batch["labels"].tolist() == [[C, D, EOS], [D, C, EOS]]


CHAT = {"messages": [{"role": "system", "content": "d"}, {"role": "user", "content": "ab"},
                     {"role": "assistant", "content": "c"}, {"role": "user", "content": "d"},
                     {"role": "assistant", "content": "ba"}]}


def test_chat_the_response_is_the_last_assistant_message(char_tok, tmp_path):
    # plain system "{content}\n", user ">{content}\n" (TEMPLATE), plain assistant "{content}\n":
    # prompt "d\n" ">ab\n" "c\n" ">d\n", then the reply "ba" and the EOS
    batch = val_batch(char_tok, write_jsonl(tmp_path / "chat.jsonl", [CHAT]), "CausalLM")
    assert batch["input_ids"].tolist() == [[D, NL, GT, A, B, NL, C, NL, GT, D, NL, B, A, EOS]]
    assert batch["labels"].tolist() == [[X, X, X, X, X, X, X, X, X, X, B, A, EOS, X]]
    assert batch["references"] == ["ba"]


def test_chat_all_assistant_scores_every_reply_and_its_end_marker(char_tok, tmp_path):
    batch = val_batch(char_tok, write_jsonl(tmp_path / "chat.jsonl", [CHAT]), "CausalLM", train_on="all_assistant")
    assert batch["input_ids"].tolist() == [[D, NL, GT, A, B, NL, C, NL, GT, D, NL, B, A, EOS]]
    # the first reply "c" and the assistant template's "\n" after it, never the user's turns
    assert batch["labels"].tolist() == [[X, X, X, X, X, C, NL, X, X, X, B, A, EOS, X]]


# ---- templates --------------------------------------------------------------------------------------------


def test_builtin_templates_render_as_documented():
    alpaca = format_record({"instruction": "Sort.", "input": "cab", "output": "abc"}, BUILTIN_TEMPLATES["alpaca"])
    prompt = ("Below is an instruction that describes a task, paired with an input that provides further context. "
              "Write a response that appropriately completes the request.\n\n### Instruction:\nSort.\n\n"
              "### Input:\ncab\n\n### Response:\n")
    assert alpaca == [(prompt, False), ("abc", True)]
    # an empty input and a missing one read the same: the no-input prompt
    for record in ({"instruction": "Hi.", "output": "Hello"}, {"instruction": "Hi.", "input": "", "output": "Hello"}):
        assert format_record(record, BUILTIN_TEMPLATES["plain"]) == [("Hi.\n", False), ("Hello", True)]
    chat = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                         {"role": "assistant", "content": "Hello"}]}
    assert format_record(chat, BUILTIN_TEMPLATES["chatml"]) == [
        ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n", False),
        ("Hello", True),
    ]


def test_a_custom_template_overrides_its_base():
    template = resolve_template({"base": "chatml", "user": "Q: {content}\n", "prompt_no_input": "Q: {instruction}\nA: "})
    assert template.system == BUILTIN_TEMPLATES["chatml"].system
    assert format_record({"instruction": "2+2?", "output": "4"}, template) == [("Q: 2+2?\nA: ", False), ("4", True)]
    assert resolve_template({"prompt_no_input": "{{{instruction}}}"}).prompt_no_input.format(instruction="x") == "{x}"


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ({"prompt": "{instuction}: {input}"},
         r"data.template.prompt: unknown placeholder \{instuction\} \(did you mean \{instruction\}\?\)"),
        ({"prompt_no_input": "{instruction} {input}"}, r"data.template.prompt_no_input: unknown placeholder \{input\}"),
        ({"assistant": "A:"}, r"data.template.assistant='A:' must hold \{content\} exactly once"),
        ({"user": "{content"}, r"data.template.user='\{content' is not a valid template"),
        ({"promt": "x"}, r"data.template: unknown key 'promt' \(did you mean 'prompt'\?\)"),
        ("alpacca", r"data.template: unknown template 'alpacca' \(did you mean 'alpaca'\?\); built-in: alpaca, plain"),
        ({"base": "chatmd"}, r"data.template.base: unknown template 'chatmd'"),
    ],
)
def test_bad_templates_are_refused_when_the_module_is_built(template, message):
    with pytest.raises(ConfigError, match=message):
        InstructionDataModule(paths=["unused.jsonl"], template=template)


# ---- record errors ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"instruction": "ab"}, r"bad.jsonl:2: field 'output' is missing"),
        ({"instruction": "ab", "input": 3, "output": "c"}, r"bad.jsonl:2: field 'input' must be a string"),
        ({"prompt": "ab"}, r"bad.jsonl:2: has neither 'instruction'/'output' .* nor 'messages'"),
        ({"messages": [{"role": "bot", "content": "a"}]}, r"bad.jsonl:2: field 'messages\[0\].role' is 'bot'"),
        ({"messages": [{"role": "user", "content": "a"}]}, r"bad.jsonl:2: field 'messages' has no assistant message"),
        ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                       {"role": "user", "content": "c"}]}, r"bad.jsonl:2: field 'messages\[2\]' \(user\) comes after"),
        ({"instruction": "", "output": "c"}, r"bad.jsonl:2: the prompt is empty"),
    ],
)
def test_bad_records_name_the_file_line_and_field(char_tok, tmp_path, record, message):
    data = write_jsonl(tmp_path / "bad.jsonl", [RECORDS[0], record])
    with pytest.raises(ConfigError, match=message):
        val_batch(char_tok, data, "CausalLM", template={"prompt_no_input": "{instruction}"})


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"pack": True, "kind": "Seq2SeqLM"}, r"data.pack: packing is for CausalLM; a Seq2SeqLM row"),
        ({"pack": True, "kind": "PrefixLM"}, r"data.pack: packing is for CausalLM; a PrefixLM row .* prefix"),
        ({"train_on": "all_assistant", "kind": "PrefixLM"}, r"data.train_on=all_assistant is for CausalLM"),
        ({"train_on": "every"}, r"data.train_on='every' is not one of last, all_assistant"),
        ({"truncation": "right"}, r"data.truncation='right' is not one of left, drop"),
        ({"max_len": 10, "min_response_len": 9}, r"data.max_len=10 leaves no room"),
    ],
)
def test_bad_options_are_refused(options, message):
    with pytest.raises(ConfigError, match=message):
        InstructionDataModule(paths=["unused.jsonl"], **options)


# ---- truncation ---------------------------------------------------------------------------------------------


def test_fit_decoder_prefers_the_response_above_its_floor_and_cuts_the_prompt_from_the_left():
    prompt, response = list(range(10)), list(range(100, 106))
    # both long: the response keeps min_response_len=3, the prompt its last 11 - 3 = 8 tokens
    assert fit_decoder(prompt, [], response, 12, 3) == (prompt[2:], [], response[:3], True, True)
    # a short prompt leaves room: the response keeps 11 - 2 = 9 of its 20 tokens, the prompt is whole
    assert fit_decoder(prompt[:2], [], list(range(20)), 12, 3) == (prompt[:2], [], list(range(9)), False, True)
    # a short response is kept whole, the prompt cut to what is left
    assert fit_decoder(list(range(20)), [], [7, 8], 12, 3) == (list(range(11, 20)), [], [7, 8], True, False)
    # scored spans move with the cut; one cut away disappears; position 0 cannot be scored
    assert fit_decoder(prompt, [(0, 2), (2, 4), (5, 7)], response, 12, 3)[1] == [(1, 2), (3, 5)]
    assert fit_decoder(prompt, [], response, 12, 3, "drop") is None
    assert fit_decoder(prompt, [], response, 17, 3, "drop") == (prompt, [], response, False, False)


LONG = [{"instruction": "abababab", "output": "cd"}, {"instruction": "a", "output": "b"}]


def test_left_truncation_keeps_the_end_of_the_prompt_and_is_reported(char_tok, tmp_path, caplog):
    data = write_jsonl(tmp_path / "long.jsonl", LONG)
    with caplog.at_level(logging.INFO, logger="llm_modules"):
        batch = val_batch(char_tok, data, "CausalLM", max_len=8, min_response_len=2)
    # ">abababab\n" (10) + "cd" + EOS is 13 > 8: the prompt keeps its last 8 - 1 - 2 = 5 tokens
    assert batch["input_ids"].tolist() == [[A, B, A, B, NL, C, D, EOS], [GT, A, NL, B, EOS, PAD, PAD, PAD]]
    assert batch["labels"].tolist() == [[X, X, X, X, C, D, EOS, X], [X, X, B, EOS, X, X, X, X]]
    assert "2 instruction records" in caplog.text
    assert "truncation=left at data.max_len=8: 1 prompts cut from the left, 0 responses cut" in caplog.text


def test_drop_truncation_leaves_long_records_out_and_counts_them(char_tok, tmp_path, caplog):
    data = write_jsonl(tmp_path / "long.jsonl", LONG)
    with caplog.at_level(logging.INFO, logger="llm_modules"):
        batch = val_batch(char_tok, data, "CausalLM", max_len=8, min_response_len=2, truncation="drop")
    assert batch["input_ids"].tolist() == [[GT, A, NL, B, EOS]]
    assert "truncation=drop at data.max_len=8: 1 dropped" in caplog.text
    with pytest.raises(ConfigError, match=r"data.truncation=drop left no records.*data.max_len=4"):
        val_batch(char_tok, data, "CausalLM", max_len=4, min_response_len=2, truncation="drop")


def test_seq2seq_truncation_uses_source_and_target_limits(char_tok, tmp_path):
    data = write_jsonl(tmp_path / "long.jsonl", LONG)
    batch = val_batch(char_tok, data, "Seq2SeqLM", max_source_len=4, max_target_len=2)
    assert batch["input_ids"].tolist() == [[B, A, B, NL], [GT, A, NL, PAD]]  # the prompt's end
    assert batch["labels"].tolist() == [[C, EOS], [B, EOS]]  # the response's start, and the EOS
    dropped = val_batch(char_tok, data, "Seq2SeqLM", max_source_len=4, max_target_len=3, truncation="drop")
    assert dropped["labels"].tolist() == [[B, EOS]]


# ---- packing ------------------------------------------------------------------------------------------------

PACKABLE = [{"instruction": "a" * (1 + i % 4), "input": "b" * (i % 3), "output": "cd"[: 1 + i % 2] * (1 + i % 3)}
            for i in range(24)]


def test_packing_keeps_examples_whole_labels_on_responses_and_documents_apart(char_tok, tmp_path):
    data = write_jsonl(tmp_path / "pack.jsonl", PACKABLE)
    dm = InstructionDataModule(train_paths=[str(data)], tokenizer=str(char_tok), kind="CausalLM", template=TEMPLATE,
                               max_len=16, min_response_len=1, pack=True, batch_size=4)
    dm.setup("fit")
    expected = sorted((p.source_ids + p.target_ids, decoder_labels(p)) for p in dm.train)
    found, rows = [], 0
    for batch in dm.train_dataloader():
        assert batch["input_ids"].shape[1] <= 16
        for ids, mask, labels, docs in zip(*(batch[k].tolist() for k in ("input_ids", "attention_mask", "labels",
                                                                         "document_ids"))):
            rows += 1
            real = sum(mask)
            assert mask == [1] * real + [0] * (len(mask) - real)
            assert docs[:real] == sorted(docs[:real]) and docs[0] == 0  # 0, 0, 1, 1, 1, 2, ... in runs
            assert set(docs[real:]) <= {docs[real - 1]} and set(labels[real:]) <= {X}  # padding: never scored
            for d in range(docs[real - 1] + 1):
                span = [t for t, doc in enumerate(docs[:real]) if doc == d]
                assert span == list(range(span[0], span[-1] + 1))
                found.append(([ids[t] for t in span], [labels[t] for t in span]))
    # every example exactly once, whole, with its own response labels; fewer rows than examples
    assert sorted(found) == expected and rows < len(expected)


def test_a_packed_batch_costs_what_its_examples_cost_alone(char_tok, tmp_path):
    """Document ids keep packed examples apart: the summed loss equals the unpacked one."""
    data = write_jsonl(tmp_path / "pack.jsonl", PACKABLE)
    dm = InstructionDataModule(train_paths=[str(data)], tokenizer=str(char_tok), kind="CausalLM", template=TEMPLATE,
                               max_len=16, min_response_len=1, pack=True, batch_size=100)
    dm.setup("fit")
    packed = next(iter(dm.train_dataloader()))
    alone = PairCollator("CausalLM", PAD)(dm.train)
    torch.manual_seed(0)
    model = CausalLM(ModelConfig(vocab_size=14, d_model=16, n_layers=1, n_heads=2, max_seq_len=32,
                                 position="learned")).eval()

    def total(batch):
        logits, targets = model.logits_and_targets(batch)
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=X, reduction="sum")

    with torch.no_grad():
        assert total(packed).item() == pytest.approx(total(alone).item(), rel=1e-5)


# ---- the shipped tiny set, end to end -----------------------------------------------------------------------


def test_the_tiny_sets_are_what_make_tiny_writes(tmp_path):
    spec = importlib.util.spec_from_file_location("make_tiny", TINY / "make_tiny.py")
    make_tiny = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_tiny)
    for name, records in [("tiny.jsonl", make_tiny.instruction_records(random.Random(0), 300)),
                          ("tiny_chat.jsonl", make_tiny.chat_records(random.Random(1), 200))]:
        make_tiny.write(tmp_path / name, records)
        assert (tmp_path / name).read_bytes() == (TINY / name).read_bytes(), f"regenerate {name} with make_tiny.py"
        assert (TINY / name).stat().st_size < 60_000


@pytest.fixture(scope="module")
def tiny_tok(tmp_path_factory) -> Path:
    records = [json.loads(line) for name in ("tiny.jsonl", "tiny_chat.jsonl")
               for line in (TINY / name).read_text().splitlines()]
    texts = ["".join(text for text, _ in format_record(r, BUILTIN_TEMPLATES[t])) for r in records
             for t in ("plain", "chatml")]
    path = tmp_path_factory.mktemp("tinytok") / "tiny.model"
    Tokenizer.train(iter(texts), path, vocab_size=400, num_sentinels=8)
    return path


def test_the_chat_set_loads_with_every_assistant_turn_scored(tiny_tok):
    dm = InstructionDataModule(paths=[str(TINY / "tiny_chat.jsonl")], tokenizer=str(tiny_tok), kind="CausalLM",
                               template="chatml", train_on="all_assistant", max_len=256)
    dm.setup("fit")
    assert len(dm.train) + len(dm.val) == 200 and dm.counts["prompts_cut"] == 0
    assert sum(bool(p.scored) for p in dm.train + dm.val) == 50  # the two-exchange conversations


def test_fit_on_the_tiny_set_packed_lowers_the_validation_loss(tiny_tok, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = {"vocab_size": 400, "d_model": 64, "n_layers": 2, "n_heads": 4, "max_seq_len": 64}
    args = ["fit", "--model", "llm_modules.CausalLM", "--model.config", json.dumps(config),
            "--model.optim.lr", "3e-3", "--model.optim.warmup_steps", "5",
            "--data", "InstructionDataModule", "--data.paths", f"[{TINY / 'tiny.jsonl'}]",
            "--data.tokenizer", str(tiny_tok), "--data.template", "plain", "--data.min_response_len", "8",
            "--data.pack", "true", "--data.val_fraction", "0.2",
            "--trainer.max_steps", "40", "--trainer.val_check_interval", "40",
            "--trainer.check_val_every_n_epoch", "null",
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
    assert main(args) == 0
    (first, before), (last, after) = metric_rows(tmp_path / "runs" / "llm" / "version_0", "val/loss")
    assert (first, last) == (0, 39) and after < before - 1.5, (before, after)
