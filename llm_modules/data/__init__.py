"""Data: tokenizers, text sources, datamodules and the objectives' collators."""

from llm_modules.data.collators import (
    CausalCollator,
    MaskingCollator,
    PrefixLMCollator,
    Seq2SeqCollator,
    SpanCorruptionCollator,
)
from llm_modules.data.datamodule import TextDataModule, default_cache_dir
from llm_modules.data.hf_tokenizer import HFTokenizer, load_tokenizer
from llm_modules.data.instructions import InstructionDataModule
from llm_modules.data.packing import PackedBlocks, split_documents, stack_blocks
from llm_modules.data.pairs import PairsDataModule
from llm_modules.data.preferences import PreferenceDataModule
from llm_modules.data.prompts import GenerationWriter, PromptDataModule
from llm_modules.data.sampling import ResumableSampler, mixture_order
from llm_modules.data.sources import (
    STDLIB,
    Document,
    SourceFile,
    iter_documents,
    resolve_paths,
    stdlib_files,
)
from llm_modules.data.token_cache import TokenCache, build_token_cache, open_token_cache
from llm_modules.data.tokenizer import Tokenizer

__all__ = [
    "CausalCollator",
    "MaskingCollator",
    "PrefixLMCollator",
    "Seq2SeqCollator",
    "SpanCorruptionCollator",
    "STDLIB",
    "Document",
    "InstructionDataModule",
    "PackedBlocks",
    "PairsDataModule",
    "PreferenceDataModule",
    "PromptDataModule",
    "HFTokenizer",
    "load_tokenizer",
    "GenerationWriter",
    "ResumableSampler",
    "SourceFile",
    "TextDataModule",
    "TokenCache",
    "Tokenizer",
    "build_token_cache",
    "default_cache_dir",
    "iter_documents",
    "mixture_order",
    "open_token_cache",
    "resolve_paths",
    "split_documents",
    "stack_blocks",
    "stdlib_files",
]
