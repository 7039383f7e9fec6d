"""An lm-evaluation-harness model over llm-modules checkpoints (GROUNDWORK for issue 23: not wired into
the CLI, not registered for ``lm_eval --model``, only loglikelihood checked; see the branch's notes).

``LLMModulesLM(pretrained=PATH)`` loads a ``.ckpt`` (``load_checkpoint``) or a Hugging Face folder
(``from_hf``) with its tokenizer, and answers lm-eval's three request types:

- ``loglikelihood``: lm-eval's ``TemplateLM`` splits (context, continuation) into token lists (trailing
  spaces of the context move to the continuation); here each row is scored in one forward, batched
  with right padding, and the continuation's log-probabilities summed, with whether every
  continuation token is the greedy choice;
- ``loglikelihood_rolling``: the text's log-likelihood over lm-eval's disjoint rolling windows of the
  model's length, the first conditioned on the prefix token;
- ``generate_until``: greedy decoding with the KV cache, stopped at lm-eval's ``until`` strings.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from lm_eval import utils
from lm_eval.api.model import TemplateLM


class LLMModulesLM(TemplateLM):
    """lm-eval's view of an llm-modules CausalLM/PrefixLM (decoders; Seq2SeqLM is not built yet)."""

    def __init__(self, pretrained: str | None = None, batch_size: int | str = 8, device: str = "cpu",
                 max_length: int | None = None, module=None, **kwargs):
        """``pretrained``: a ``.ckpt`` or a Hugging Face folder (what ``lm_eval --model_args`` names);
        ``module``: an llm-modules model already in memory (a fit's end-of-training evaluation), with
        its ``tokenizer`` attribute set. Exactly one of the two."""
        super().__init__()
        if (pretrained is None) == (module is None):
            raise ValueError("give either pretrained=PATH (a .ckpt or a Hugging Face folder) or module=MODEL")
        if module is None:
            from llm_modules.checkpoint import load_checkpoint
            from llm_modules.hf import from_hf

            path = Path(pretrained)
            module = from_hf(path) if path.is_dir() else load_checkpoint(path)
        self.module = module.to(device).eval()
        self.tokenizer = self.module.tokenizer
        if self.tokenizer is None:
            raise ValueError(f"{pretrained or 'the model'!r} carries no tokenizer; lm-eval requests are text")
        self._device = torch.device(device)
        self.batch_size = int(batch_size)
        self.max_length = int(max_length or self.module.config.max_seq_len)

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
        return list(self.tokenizer.encode(string))

    def tok_decode(self, tokens) -> str:
        return self.tokenizer.decode(tokens)

    @torch.no_grad()
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        order = sorted(range(len(requests)), key=lambda i: -len(requests[i][1]) - len(requests[i][2]))
        for start in range(0, len(order), self.batch_size):
            chunk = order[start:start + self.batch_size]
            rows, spans = [], []
            for i in chunk:
                _, context, continuation = requests[i]
                whole = (context + continuation)[-(self.max_length + 1):]
                inputs = whole[:-1]
                rows.append(inputs)
                spans.append((len(inputs) - len(continuation), continuation))
            width = max(len(r) for r in rows)
            ids = torch.zeros(len(rows), width, dtype=torch.long)
            mask = torch.zeros(len(rows), width, dtype=torch.long)
            for r, row in enumerate(rows):
                ids[r, :len(row)] = torch.tensor(row)
                mask[r, :len(row)] = 1
            logits = self.module(ids.to(self._device), attention_mask=mask.to(self._device)).float()
            logprobs = F.log_softmax(logits, dim=-1)
            for r, (i, (begin, continuation)) in enumerate(zip(chunk, spans)):
                piece = logprobs[r, begin:begin + len(continuation)]
                target = torch.tensor(continuation, device=piece.device)
                greedy = bool((piece.argmax(-1) == target).all())
                results[i] = (float(piece.gather(-1, target[:, None]).sum()), greedy)
        return results  # type: ignore[return-value]

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        out = []
        for (text,) in [req.args for req in requests]:
            windows = map(utils.make_disjoint_window, utils.get_rolling_token_windows(
                token_list=self.tok_encode(text), prefix_token=self.prefix_token_id,
                max_seq_len=self.max_length, context_len=1))
            scored = self._loglikelihood_tokens([(None, list(c), list(t)) for c, t in windows])
            out.append(sum(s for s, _ in scored))
        return out

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        out = []
        for context, gen_kwargs in [req.args for req in requests]:
            until = gen_kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            new = int(gen_kwargs.get("max_gen_toks", 256))
            ids = torch.tensor([self.tok_encode(context)[-(self.max_length - new):]], device=self._device)
            tokens = self.module.generate(ids, max_new_tokens=new, stop_strings=until or None)[0, ids.shape[1]:]
            text = self.tok_decode(tokens.tolist())
            for stop in until:
                text = text.split(stop)[0]
            out.append(text)
        return out
