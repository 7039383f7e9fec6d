"""``template: from_checkpoint``: instruction data formatted with the model's own chat template gives
the tokens transformers' ``apply_chat_template`` gives, with labels on the assistant's tokens only;
a missing or broken template is one line."""

from __future__ import annotations

import json

import pytest
import torch

from llm_modules.data import InstructionDataModule
from llm_modules.data.chat_template import ChatTemplate
from llm_modules.data.hf_tokenizer import load_tokenizer
from llm_modules.registry import ConfigError

from _hf_tokenizer_helpers import write_tokenizer

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello world!"},
        {"role": "assistant", "content": "Hello tokens."}, {"role": "user", "content": "Numbers like 12345?"},
        {"role": "assistant", "content": "12345 and symbols like {}."}]
INSTRUCTION = {"instruction": "Say hello.", "input": "To the world", "output": "Hello world!"}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_tokenizer(tmp_path_factory.mktemp("tok"))


def batch(folder, records, tmp_path, train_on="last", **options):
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    module = InstructionDataModule(train_paths=[str(data)], tokenizer=str(folder / "tokenizer.json"),
                                   template="from_checkpoint", train_on=train_on, kind="CausalLM", max_len=200,
                                   batch_size=len(records), **options)
    module.setup("fit")
    return next(iter(module.train_dataloader()))


def expected(folder, messages, train_on):
    """transformers' tokens and its assistant mask, as labels (position t predicts token t+1)."""
    from transformers import AutoTokenizer

    out = AutoTokenizer.from_pretrained(folder).apply_chat_template(
        messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = out["input_ids"], out["assistant_masks"]
    if train_on == "last":  # only the final reply: the mask's last run
        start = max(i for i in range(len(mask)) if mask[i] and (i == 0 or not mask[i - 1]))
        mask = [m if i >= start else 0 for i, m in enumerate(mask)]
    labels = [ids[t + 1] if mask[t + 1] else -100 for t in range(len(ids) - 1)] + [-100]
    return ids, labels


@pytest.mark.parametrize("train_on", ["last", "all_assistant"])
def test_a_conversation_is_transformers_chat_tokens_with_assistant_labels(folder, tmp_path, train_on):
    got = batch(folder, [{"messages": CHAT}], tmp_path, train_on)
    ids, labels = expected(folder, CHAT, train_on)
    assert got["input_ids"][0].tolist() == ids
    assert got["labels"][0].tolist() == labels
    assert sum(label != -100 for label in labels) > 4


def test_an_instruction_record_is_one_user_turn_and_its_reply(folder, tmp_path):
    got = batch(folder, [INSTRUCTION], tmp_path)
    messages = [{"role": "user", "content": "Say hello.\n\nTo the world"},
                {"role": "assistant", "content": "Hello world!"}]
    ids, labels = expected(folder, messages, "last")
    assert got["input_ids"][0].tolist() == ids and got["labels"][0].tolist() == labels


def test_template_problems_are_one_line(folder, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "tokenizer.json").write_bytes((folder / "tokenizer.json").read_bytes())
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (bare / "tokenizer_config.json").write_text(json.dumps({k: v for k, v in config.items() if k != "chat_template"}))
    with pytest.raises(ConfigError, match="from_checkpoint needs the model's chat template.*has none"):
        batch(bare, [{"messages": CHAT}], tmp_path)
    with pytest.raises(ConfigError, match="not valid Jinja"):
        ChatTemplate("{% for m in messages %}", {})
    refusing = ChatTemplate("{{ raise_exception('Conversation roles must alternate') }}", {})
    tok = load_tokenizer(folder / "tokenizer.json")
    tok.config["chat_template"] = refusing.source
    with pytest.raises(Exception, match="refuses it: Conversation roles must alternate"):
        ChatTemplate.of(tok).segments(CHAT)


def test_the_sandbox_keeps_a_template_out_of_python(folder):
    evil = ChatTemplate("{{ messages.__class__.__mro__[1].__subclasses__() }}", {})
    with pytest.raises(Exception, match="chat template failed"):
        evil.render(CHAT)
    mutate = ChatTemplate("{% set _ = messages.append(1) %}x", {})
    with pytest.raises(Exception, match="chat template failed"):
        mutate.render(list(CHAT))


def test_a_template_that_rewrites_earlier_turns_is_refused_for_them():
    """Qwen3-style: a template that renders a turn differently once the conversation goes on; the
    earlier replies' tokens cannot be found in the whole, so all_assistant is refused, last works."""
    from llm_modules.data.chat_template import TemplateRecordError

    rewriting = ChatTemplate("{% for m in messages %}{{ m.role }}: "
                             "{% if m.role == 'assistant' and not loop.last %}(earlier) {% endif %}{{ m.content }}\n"
                             "{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}", {})
    with pytest.raises(TemplateRecordError, match=r"up to messages\[2\] differently.*data.train_on: last"):
        rewriting.segments(CHAT, "all_assistant")
    assert rewriting.segments(CHAT, "last")[-1] == ("12345 and symbols like {}.\n", True)


#: shortened from Qwen2.5's and Llama 3.1's published templates, with their whitespace control
QWEN = (
    "{%- if messages[0]['role'] == 'system' %}\n"
    "    {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n"
    "{%- else %}\n"
    "    {{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}\n"
    "{%- endif %}\n"
    "{%- for message in messages %}\n"
    "    {%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) or "
    "(message.role == \"assistant\") %}\n"
    "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|im_start|>assistant\\n' }}\n"
    "{%- endif %}\n"
)
LLAMA31 = (
    "{{- bos_token }}\n"
    "{%- if not date_string is defined %}{%- set date_string = \"26 Jul 2024\" %}{%- endif %}\n"
    "{%- if messages[0]['role'] == 'system' %}\n"
    "    {%- set system_message = messages[0]['content']|trim %}\n"
    "    {%- set messages = messages[1:] %}\n"
    "{%- else %}\n"
    "    {%- set system_message = \"\" %}\n"
    "{%- endif %}\n"
    "{{- \"<|start_header_id|>system<|end_header_id|>\\n\\n\" }}\n"
    "{{- \"Today Date: \" + date_string + \"\\n\\n\" }}\n"
    "{{- system_message }}\n"
    "{{- \"<|eot_id|>\" }}\n"
    "{%- for message in messages %}\n"
    "    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + "
    "'<|eot_id|>' }}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}\n"
    "{%- endif %}\n"
)


@pytest.mark.parametrize("template, reply_end", [(QWEN, "<|im_end|>\n"), (LLAMA31, "<|eot_id|>")],
                         ids=["qwen2.5", "llama3.1"])
def test_published_template_layouts_give_transformers_tokens(folder, tmp_path, template, reply_end):
    from transformers import AutoTokenizer

    own = tmp_path / "own"
    own.mkdir()
    (own / "tokenizer.json").write_bytes((folder / "tokenizer.json").read_bytes())
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (own / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": template}))
    got = batch(own, [{"messages": CHAT}], tmp_path)
    ids = AutoTokenizer.from_pretrained(own).apply_chat_template(CHAT, tokenize=True, return_dict=True)["input_ids"]
    assert got["input_ids"][0].tolist() == ids
    labelled = [t for t in got["labels"][0].tolist() if t != -100]
    text = load_tokenizer(own / "tokenizer.json").decode(labelled, skip_special=False)
    assert text == CHAT[-1]["content"] + reply_end
