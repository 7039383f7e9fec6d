"""A tiny Llama-3-style Hugging Face folder, made in the test: a byte-level BPE ``tokenizer.json``
trained on a few sentences, a ``tokenizer_config.json`` with special tokens and a chat template,
a ``generation_config.json`` with a list of EOS ids, and a random tiny LLaMA (transformers).
"""

from __future__ import annotations

import json
from pathlib import Path

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "A model reads tokens and writes tokens.",
    "Hello world! Hello tokens, hello models.",
    "Numbers like 12345 and symbols like {} [] () are text too.",
    "Fine-tuning a small model on a few sentences.",
] * 4
BOS, EOT, EOS = "<|begin_of_text|>", "<|eot_id|>", "<|end_of_text|>"
SPECIALS = [BOS, EOS, "<|start_header_id|>", "<|end_header_id|>", EOT]

#: Llama 3's chat template, shortened; {% generation %} marks the assistant's tokens for transformers
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' }}"
    "{% if message['role'] == 'assistant' %}{% generation %}{{ message['content'] | trim + '<|eot_id|>' }}"
    "{% endgeneration %}{% else %}{{ message['content'] | trim + '<|eot_id|>' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)


def write_tokenizer(folder: Path, vocab_size: int = 320) -> Path:
    """``tokenizer.json`` + ``tokenizer_config.json`` in ``folder``; returns the folder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    folder.mkdir(parents=True, exist_ok=True)
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - len(SPECIALS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(SENTENCES, trainer)
    tk.add_special_tokens(SPECIALS)
    bos = tk.token_to_id(BOS)
    tk.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B",
                                                      special_tokens=[(BOS, bos)])
    tk.save(str(folder / "tokenizer.json"))
    config = {"bos_token": BOS, "eos_token": EOT, "tokenizer_class": "PreTrainedTokenizerFast",
              "clean_up_tokenization_spaces": False, "model_max_length": 256, "chat_template": CHAT_TEMPLATE}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return folder


def eos_list(folder: Path) -> list[int]:
    """The EOS ids of the folder's generation_config.json (end of text, end of turn)."""
    from tokenizers import Tokenizer

    tk = Tokenizer.from_file(str(folder / "tokenizer.json"))
    return [tk.token_to_id(EOS), tk.token_to_id(EOT)]


def write_llama_folder(folder: Path, seed: int = 0, padded_vocab: int | None = None) -> Path:
    """A tiny random LLaMA with the tokenizer above and generation_config.json's EOS list;
    ``padded_vocab``: an embedding table larger than the tokenizer (as Qwen's)."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    write_tokenizer(folder)
    from tokenizers import Tokenizer

    tk = Tokenizer.from_file(str(folder / "tokenizer.json"))
    eos = eos_list(folder)
    config = LlamaConfig(vocab_size=padded_vocab or tk.get_vocab_size(), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         bos_token_id=tk.token_to_id(BOS), eos_token_id=eos[0], tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(folder)
    GenerationConfig(bos_token_id=config.bos_token_id, eos_token_id=eos, do_sample=False).save_pretrained(folder)
    return folder
