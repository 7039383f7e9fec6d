"""Soft prompts: learned input embeddings in front of every input (prompt tuning, P-tuning).

Both methods train P virtual tokens that the model reads before the real ones (``peft.virtual_tokens``
places them: positions 0..P-1, the real tokens after them; logits stay one per real token). Only
the model's input stack gets them: the decoder-only or encoder-only stack, or an encoder-decoder's
encoder, whose output keeps them so the decoder cross-attends to them.

- ``prompt`` (Lester et al., 2021): the P embeddings are the parameters.
- ``ptuning`` (Liu et al., 2021, "GPT Understands, Too"): the embeddings come out of a small
  encoder (an MLP, or a bidirectional LSTM then an MLP) over P learned inputs, which the paper
  found trains more stably than free embeddings. ``merge`` runs the encoder once and keeps its
  output as a plain soft prompt, so inference skips it; ``unmerge`` puts the encoder back.

``disabled`` (``peft.adapters_disabled``, shared with prefix tuning) switches the model's virtual
tokens off, so it reads the real tokens alone: the base function.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import nn

from llm_modules.peft.base import PeftMethod
from llm_modules.peft.virtual_token_lm import install, virtual_token_host, virtual_tokens_disabled, virtual_tokens_of
from llm_modules.peft.virtual_tokens import VirtualTokens
from llm_modules.registry import PEFT_METHODS, ConfigError

ENCODERS = ("mlp", "lstm")


class SoftPrompt(VirtualTokens):
    """P learned input vectors (``weight``, (P, d_model)) for one stack."""

    def __init__(self, stack: str, weight: torch.Tensor):
        super().__init__()
        self.stack = stack
        self.weight = nn.Parameter(weight)

    def num_virtual_tokens(self, stack: str) -> int:
        return self.weight.shape[0] if stack == self.stack else 0

    def embeddings(self, stack: str, batch: int) -> torch.Tensor | None:
        return self.weight.unsqueeze(0).expand(batch, -1, -1) if stack == self.stack else None


class PromptEncoder(VirtualTokens):
    """P-tuning's prompt: ``encoder(inputs)``, with learned ``inputs`` (P, d_model).

    After ``fold`` the encoder's output is kept as ``weight`` and inputs and encoder are gone.
    """

    def __init__(self, stack: str, inputs: torch.Tensor, encoder: nn.Module):
        super().__init__()
        self.stack = stack
        self.inputs = nn.Parameter(inputs)
        self.encoder = encoder
        self.weight: nn.Parameter | None = None

    def num_virtual_tokens(self, stack: str) -> int:
        tokens = self.weight if self.weight is not None else self.inputs
        return tokens.shape[0] if stack == self.stack else 0

    def prompt(self) -> torch.Tensor:
        """The virtual tokens' embeddings (P, d_model)."""
        if self.weight is not None:
            return self.weight
        return self.encoder(self.inputs.unsqueeze(0)).squeeze(0)

    def embeddings(self, stack: str, batch: int) -> torch.Tensor | None:
        return self.prompt().unsqueeze(0).expand(batch, -1, -1) if stack == self.stack else None

    def fold(self) -> tuple[nn.Parameter, nn.Module]:
        """Keep the encoder's output as a plain prompt; returns what it replaced (for ``unfold``)."""
        with torch.no_grad():
            weight = self.prompt().detach().clone()
        removed = (self.inputs, self.encoder)
        self.inputs, self.encoder = None, None
        self.weight = nn.Parameter(weight)
        return removed

    def unfold(self, removed: tuple[nn.Parameter, nn.Module]) -> None:
        """Put back what ``fold`` removed (on the device the prompt is on now); the folded copy goes."""
        inputs, encoder = removed
        device = self.weight.device
        self.weight = None
        inputs.data = inputs.data.to(device)
        self.inputs, self.encoder = inputs, encoder.to(device)


class MLPEncoder(nn.Sequential):
    """Two layers with a ReLU between them, ``d_in -> hidden_size -> d_out`` (d_out: d_in)."""

    def __init__(self, d_in: int, hidden_size: int, d_out: int | None = None):
        super().__init__(nn.Linear(d_in, hidden_size), nn.ReLU(), nn.Linear(hidden_size, d_out or d_in))


class LSTMEncoder(nn.Module):
    """P-tuning's encoder: a two-layer bidirectional LSTM over the P inputs, so each virtual token
    depends on its neighbours, then an MLP back to d_model."""

    def __init__(self, d_model: int, hidden_size: int):
        super().__init__()
        self.lstm = nn.LSTM(d_model, hidden_size, num_layers=2, bidirectional=True, batch_first=True)
        self.head = MLPEncoder(2 * hidden_size, hidden_size, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.lstm(x)[0])


def check_count(method: str, num_virtual_tokens: Any) -> int:
    if isinstance(num_virtual_tokens, bool) or not isinstance(num_virtual_tokens, int) or num_virtual_tokens < 1:
        raise ConfigError(f"peft {method}: num_virtual_tokens must be a positive integer; got {num_virtual_tokens!r}")
    return num_virtual_tokens


def input_stack(host: nn.Module) -> str:
    return host.stack_names[0]


def embedding_scale(host: nn.Module) -> float:
    """The spread of the model's token embeddings: a random prompt starts at the same scale."""
    return float(host.embed.tokens.weight.detach().float().std())


@PEFT_METHODS.register("prompt")
class PromptTuning(PeftMethod):
    """Prompt tuning: ``num_virtual_tokens`` learned embeddings in front of every input.

    ``init``: ``"random"`` (normal, at the spread of the model's token embeddings), ``"vocab"``
    (the embeddings of random vocabulary tokens) or a list of token ids (a tokenized text, e.g.
    a task description; repeated or cut to ``num_virtual_tokens``). The paper found starts from
    real token embeddings train better than random ones, most of all for smaller models.
    Text needs tokenizing first: the method sees the model, not its tokenizer.
    """

    def __init__(self, num_virtual_tokens: int = 20, init: str | list[int] = "random"):
        self.num_virtual_tokens = check_count("prompt", num_virtual_tokens)
        if isinstance(init, str) and init not in ("random", "vocab"):
            raise ConfigError(
                f"peft prompt: init {init!r} is not 'random', 'vocab' or a list of token ids; tokenize a text "
                "init and pass its ids"
            )
        if not isinstance(init, str) and (
            not isinstance(init, (list, tuple)) or not init or not all(isinstance(i, int) and not isinstance(i, bool) for i in init)
        ):
            raise ConfigError(f"peft prompt: init must be 'random', 'vocab' or a non-empty list of token ids; got {init!r}")
        self.init = init if isinstance(init, str) else [int(i) for i in init]

    def inject(self, model: nn.Module) -> None:
        host = virtual_token_host(model)
        install(model, self.name or "prompt", SoftPrompt(input_stack(host), self.initial_prompt(host)))

    def disabled(self, model: nn.Module) -> AbstractContextManager[None]:
        return virtual_tokens_disabled(model)

    def initial_prompt(self, host: nn.Module) -> torch.Tensor:
        """(P, d_model) starting embeddings, on the embedding table's device and dtype."""
        table = host.embed.tokens.weight
        count, vocab = self.num_virtual_tokens, table.shape[0]
        if self.init == "random":
            return torch.randn(count, table.shape[1], device=table.device, dtype=table.dtype) * embedding_scale(host)
        if self.init == "vocab":
            ids = torch.randint(0, vocab, (count,))
        else:
            outside = [i for i in self.init if not 0 <= i < vocab]
            if outside:
                raise ConfigError(f"peft prompt: init ids {outside} are not token ids of this model (vocab_size={vocab})")
            ids = torch.tensor([self.init[i % len(self.init)] for i in range(count)])
        with torch.no_grad():  # what the model's embedding gives these tokens (token types included)
            return host.embed(ids.to(table.device).unsqueeze(0)).squeeze(0).detach().clone()


@PEFT_METHODS.register("ptuning")
class PTuning(PeftMethod):
    """P-tuning: ``num_virtual_tokens`` embeddings produced by a small trained ``encoder``
    (``mlp`` or ``lstm``, width ``hidden_size``, default d_model) from learned inputs.
    ``merge`` keeps the encoder's output as a plain prompt (inference without the encoder)."""

    def __init__(self, num_virtual_tokens: int = 20, encoder: str = "mlp", hidden_size: int | None = None):
        self.num_virtual_tokens = check_count("ptuning", num_virtual_tokens)
        if encoder not in ENCODERS:
            raise ConfigError(f"peft ptuning: unknown encoder {encoder!r}; choices: {', '.join(ENCODERS)}")
        if hidden_size is not None and (isinstance(hidden_size, bool) or not isinstance(hidden_size, int) or hidden_size < 1):
            raise ConfigError(f"peft ptuning: hidden_size must be a positive integer; got {hidden_size!r}")
        self.encoder, self.hidden_size = encoder, hidden_size
        self._removed: tuple[nn.Parameter, nn.Module] | None = None

    def inject(self, model: nn.Module) -> None:
        host = virtual_token_host(model)
        table = host.embed.tokens.weight
        d_model = table.shape[1]
        width = self.hidden_size or d_model
        encoder = (MLPEncoder if self.encoder == "mlp" else LSTMEncoder)(d_model, width)
        inputs = torch.randn(self.num_virtual_tokens, d_model) * embedding_scale(host)
        prompt = PromptEncoder(input_stack(host), inputs, encoder).to(device=table.device, dtype=table.dtype)
        install(model, self.name or "ptuning", prompt)

    def merge(self, model: nn.Module) -> None:
        prompt = self._prompt(model)
        if prompt.weight is None:
            self._removed = track_added_keys(self, model, prompt.fold)

    def unmerge(self, model: nn.Module) -> None:
        prompt = self._prompt(model)
        if self._removed is None:
            raise ConfigError("peft ptuning: the prompt encoder is not merged, so there is nothing to unmerge")
        removed, self._removed = self._removed, None
        track_added_keys(self, model, lambda: prompt.unfold(removed))

    def is_merged(self, model: nn.Module) -> bool:
        """Folded: the state is the encoder's output, not what was trained (adapter files refuse it)."""
        return self._prompt(model).weight is not None

    def disabled(self, model: nn.Module) -> AbstractContextManager[None]:
        return virtual_tokens_disabled(model)

    def _prompt(self, model: nn.Module) -> PromptEncoder:
        prompt = virtual_tokens_of(model)
        if not isinstance(prompt, PromptEncoder):
            raise ConfigError("peft ptuning: this model has no P-tuning prompt; apply the method first")
        return prompt


def track_added_keys(method: PeftMethod, model: nn.Module, change):
    """Run ``change`` (which swaps the method's modules) and keep ``added_keys`` in step with the
    model's state dict, so the method's state stays what an adapter file holds."""
    before = set(model.state_dict())
    result = change()
    after = set(model.state_dict())
    method.added_keys = frozenset((set(method.added_keys) - (before - after)) | (after - before))
    return result
