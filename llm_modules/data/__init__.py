"""Data: tokenizers, text sources, datamodules and the objectives' collators.

The names below are imported from their modules on first use: the data modules pull in Lightning
(seconds of import), which ``llm-modules data prepare`` (``llm_modules.data.prepare``) never needs.
"""

import importlib

_WHERE = {
    **dict.fromkeys(("CausalCollator", "MaskingCollator", "PrefixLMCollator", "Seq2SeqCollator",
                     "SpanCorruptionCollator"), "collators"),
    **dict.fromkeys(("TextDataModule", "default_cache_dir"), "datamodule"),
    **dict.fromkeys(("HFTokenizer", "load_tokenizer"), "hf_tokenizer"),
    "InstructionDataModule": "instructions",
    **dict.fromkeys(("PackedBlocks", "split_documents", "stack_blocks"), "packing"),
    "PairsDataModule": "pairs",
    "PreferenceDataModule": "preferences",
    **dict.fromkeys(("GenerationWriter", "PromptDataModule"), "prompts"),
    **dict.fromkeys(("ResumableSampler", "mixture_order"), "sampling"),
    **dict.fromkeys(("STDLIB", "Document", "SourceFile", "iter_documents", "resolve_paths", "stdlib_files"),
                    "sources"),
    **dict.fromkeys(("TokenCache", "build_token_cache", "open_token_cache"), "token_cache"),
    "Tokenizer": "tokenizer",
}

__all__ = sorted(_WHERE)


def __getattr__(name):
    if name in _WHERE:
        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_WHERE))
