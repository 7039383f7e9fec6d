"""An lm-evaluation-harness model over llm-modules checkpoints: ``lm_eval --model llm-modules``.

``LLMModulesLM(pretrained=PATH)`` loads a ``.ckpt`` (``load_model``) or a Hugging Face folder
(``from_hf``) with its tokenizer; ``module=MODEL`` takes a model already in memory (a fit's
end-of-training evaluation). Registered as ``llm-modules`` by the top-level ``llm_modules_lm_eval``
(a ``.pth`` hook the wheel installs), so
``lm_eval --model llm-modules --model_args pretrained=PATH,batch_size=16,seed=0 --tasks ...`` works
once both packages are installed. It answers lm-eval's three request types with the numbers lm-eval's
own Hugging Face model (``hf``) gives on the model's ``to_hf`` export, or on the Hugging Face folder:

- text is encoded as transformers encodes it for ``hf`` (``tok_encode``: BOS where the folder's
  tokenizer adds it, as LLaMA's does; nothing for a model trained here);
- ``loglikelihood`` (``lm_eval_scoring``): lm-eval's ``TemplateLM`` tokenizes (context, continuation)
  (trailing spaces of the context move to the continuation; an empty context becomes the prefix
  token); a context shared by several continuations runs once (KV cache), other rows are batched
  longest first, identical model inputs run once;
- ``loglikelihood_rolling``: lm-eval's disjoint rolling windows of the model's length, the first
  conditioned on the prefix token, scored as loglikelihood rows;
- ``generate_until`` (``lm_eval_generation``): batched, left-padded, with the KV cache, stopped at
  EOS and lm-eval's ``until`` strings; greedy, or sampled from a seeded generator.

Which LM kinds, and how:

- CausalLM: exactly lm-eval's decoder treatment (``hf`` with AutoModelForCausalLM).
- PrefixLM: the context is the prefix. A prefix decoder was trained to read its input
  bidirectionally and predict only what follows, so a continuation is scored (and generated, as
  ``llm-modules generate`` does) after a bidirectional read of the context; that is the model's own
  conditional distribution, while a causal read would score it under an attention pattern it never
  trained on. The continuation's tokens still see only their past. Rolling windows have a one-token
  context, so there the model is the plain causal decoder.
- Seq2SeqLM: as ``hf`` with AutoModelForSeq2SeqLM: the context is the encoder's input, the
  continuation is scored by the decoder from the decoder start token; generation reads the context
  with the encoder, and ``max_gen_toks`` bounds the new tokens as for a decoder (``hf`` lets the
  decoder run to the padded context width plus ``max_gen_toks``). ``loglikelihood_rolling`` is
  answered as ``hf`` answers it (each window scored by the decoder over a one-token encoder input:
  the decoder's own language model), so the numbers compare, but they say little about an
  encoder-decoder.
- MaskedLM (encoder-only) cannot continue text: refused when the model is built.

``seed`` (model_args) seeds sampling; without it the generator is seeded from torch's global
generator, which lm-eval seeds itself (``--seed``), so runs repeat either way.
"""

from __future__ import annotations

from pathlib import Path

import torch
from lm_eval import utils
from lm_eval.api.model import TemplateLM

from llm_modules.registry import ConfigError, did_you_mean

KINDS = ("CausalLM", "PrefixLM", "Seq2SeqLM")
#: what lm-eval's command line adds to --model_args (``LM.create_from_arg_string``)
HARNESS_ARGS = ("max_batch_size",)
DTYPES = ("float32", "bfloat16", "float16")


class LLMModulesLM(TemplateLM):
    """lm-eval's view of an llm-modules CausalLM, PrefixLM or Seq2SeqLM (see the module docstring)."""

    def __init__(self, pretrained: str | None = None, batch_size: int | str = 8, device: str | None = None,
                 max_length: int | None = None, module=None, seed: int | None = None, dtype: str | None = None,
                 **kwargs):
        """``pretrained``: a ``.ckpt`` or a Hugging Face folder (what ``lm_eval --model_args`` names);
        ``module``: an llm-modules model already in memory, with its ``tokenizer`` attribute set.
        Exactly one of the two. ``batch_size``: rows per forward / prompts per ``generate`` call;
        ``max_length``: tokens the model reads (default: its ``max_seq_len``); ``seed``: sampling;
        ``dtype``: float32, bfloat16 or float16 weights (default: as saved)."""
        super().__init__()
        _check_arguments(pretrained, module, kwargs)
        if module is None:
            module = _load(pretrained)
        name = pretrained or "the model"
        kind = getattr(module, "kind", type(module).__name__)
        if kind == "MaskedLM":
            raise ConfigError(f"{name} is a MaskedLM (encoder-only), which does not continue text; lm-eval's "
                             "requests need a CausalLM, PrefixLM or Seq2SeqLM")
        if kind not in KINDS:
            raise ConfigError(f"{name} is a {kind}; the lm-eval model evaluates {', '.join(KINDS)}")
        self._device = _device(device)
        if dtype not in (None, "auto") and getattr(module, "quantization", None):
            raise ConfigError(f"dtype={dtype}: a quantized checkpoint keeps the number formats it was saved with; "
                              "drop dtype")
        self.module = module.to(self._device, _dtype(dtype)).eval()
        self.kind = kind
        self.seq2seq = kind == "Seq2SeqLM"
        self.backend = "seq2seq" if self.seq2seq else "causal"  # TemplateLM._encode_pair reads it
        self.tokenizer = self.module.tokenizer
        if self.tokenizer is None:
            raise ConfigError(f"{name} carries no tokenizer; lm-eval requests are text")
        self.batch_size = _batch_size(batch_size)
        self.max_length = int(max_length or self.module.config.max_seq_len)

        from llm_modules.generation.defaults import pad_id, stop_ids

        self.stop_ids = stop_ids(self.module, self.tokenizer)
        pad = pad_id(self.module, self.tokenizer)
        self.pad_token_id = pad if pad is not None else self.eot_token_id
        self.generator = torch.Generator(device=self._device)
        self.generator.manual_seed(int(seed) if seed is not None else int(torch.randint(2**62, ())))

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_id

    @property
    def prefix_token_id(self) -> int:
        """What an empty context (and a rolling window's start) is conditioned on: BOS when the
        tokenizer has one, as lm-eval's HF model does, else EOS."""
        bos = getattr(self.tokenizer, "bos_id", None)
        return bos if bos is not None and bos >= 0 else self.eot_token_id

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        """Ids as lm-eval's ``hf`` gets them from transformers: by default with what the tokenizer adds
        to a model input (``generation.prompts.encode_prompt``: BOS for a LLaMA folder, nothing for a
        model trained here), without when lm-eval says ``add_special_tokens=False``."""
        if add_special_tokens is False:
            return list(self.tokenizer.encode(string))
        from llm_modules.generation.prompts import encode_prompt

        return list(encode_prompt(self.tokenizer, self.module, string))

    def tok_decode(self, tokens) -> str:
        return self.tokenizer.decode(tokens)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        from llm_modules.evaluation.lm_eval_scoring import Scorer

        return Scorer(self.module, self.batch_size, self.max_length, self._device)(requests)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        rows, owner = [], []
        for n, (text,) in enumerate(req.args for req in requests):
            windows = map(utils.make_disjoint_window, utils.get_rolling_token_windows(
                token_list=self.tok_encode(text), prefix_token=self.prefix_token_id,
                max_seq_len=self.max_length, context_len=1))
            for context, target in windows:
                rows.append((None, list(context), list(target)))
                owner.append(n)
        totals = [0.0] * len(requests)
        for n, (score, _) in zip(owner, self._loglikelihood_tokens(rows)):
            totals[n] += score
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        from llm_modules.evaluation.lm_eval_generation import generate_until

        return generate_until(self, [req.args for req in requests])


def _check_arguments(pretrained, module, extra: dict) -> None:
    if (pretrained is None) == (module is None):
        raise ConfigError("give either pretrained=PATH (a .ckpt or a Hugging Face folder) or module=MODEL")
    unknown = sorted(set(extra) - set(HARNESS_ARGS))
    if unknown:
        known = ("pretrained", "batch_size", "device", "max_length", "seed", "dtype")
        raise ConfigError(f"model_args {unknown[0]!r} is not an llm-modules lm-eval model argument"
                          f"{did_you_mean(unknown[0], known)}; "
                          f"it takes {', '.join(known)}")


def _load(pretrained: str):
    path = Path(pretrained)
    if not path.exists():
        raise ConfigError(f"pretrained={pretrained!r} does not exist; give a .ckpt file or a Hugging Face folder")
    from llm_modules.checkpoint import load_model
    from llm_modules.hf import from_hf

    # InferenceLM: evaluation never trains, so Lightning's import (seconds) is not paid
    return from_hf(path, trains=False) if path.is_dir() else load_model(path)


def _device(name: str | None) -> torch.device:
    """The device to run on. lm-eval's command line passes ``cuda:0`` unless told otherwise; like its
    ``hf`` model, a CUDA device on a machine without CUDA (and no device at all) means the CPU then."""
    if name is None or (str(name).startswith("cuda") and not torch.cuda.is_available()):
        if name is not None:
            import logging

            logging.getLogger(__name__).warning("device %s: CUDA is not available, running on the CPU", name)
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _dtype(name: str | None) -> torch.dtype | None:
    if name is None or name == "auto":
        return None
    if name not in DTYPES:
        raise ConfigError(f"dtype={name!r}{did_you_mean(name, DTYPES)}: give one of {', '.join(DTYPES)}")
    return getattr(torch, name)


def _batch_size(value) -> int:
    """lm-eval passes ``--batch_size`` through (a number, or ``auto``, which we read as 16: no probing
    for memory limits here)."""
    if isinstance(value, str) and value.startswith("auto"):
        return 16
    try:
        size = int(value)
    except (TypeError, ValueError):
        size = 0
    if size < 1:
        raise ConfigError(f"batch_size={value!r}: give a positive number of rows per batch")
    return size
