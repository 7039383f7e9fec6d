"""LightningModules: one shared base and one small subclass per LM kind."""

from llm_modules.models.base import IGNORE_INDEX, LanguageModel
from llm_modules.models.causal import CausalLM
from llm_modules.models.masked import MaskedLM
from llm_modules.models.prefix import PrefixLM
from llm_modules.models.seq2seq import Seq2SeqLM

KINDS = {cls.__name__: cls for cls in (CausalLM, PrefixLM, Seq2SeqLM, MaskedLM)}

__all__ = ["IGNORE_INDEX", "LanguageModel", "CausalLM", "PrefixLM", "Seq2SeqLM", "MaskedLM", "KINDS"]
