"""LightningModules: one shared base and one small subclass per LM kind."""

from llm_modules.kinds import KINDS as _KINDS
from llm_modules.models.base import IGNORE_INDEX, LanguageModel
from llm_modules.models.causal import CausalLM
from llm_modules.models.masked import MaskedLM
from llm_modules.models.prefix import PrefixLM
from llm_modules.models.seq2seq import Seq2SeqLM

#: class name -> LightningModule class, for every kind of the one table (``llm_modules.kinds``)
KINDS = {kind.class_name: globals()[kind.class_name] for kind in _KINDS.values()}

__all__ = ["IGNORE_INDEX", "LanguageModel", "CausalLM", "PrefixLM", "Seq2SeqLM", "MaskedLM", "KINDS"]
