"""Prefix tuning (Li & Liang, 2021): learned keys and values in front of every self-attention.

Each self-attention layer of every stack (a decoder-only or encoder-only model's stack; an
encoder-decoder's encoder and decoder) attends to ``num_virtual_tokens`` extra keys/values that
are trained while the model stays frozen. ``peft.virtual_tokens`` places them: they act as tokens
at positions 0..P-1 in front of each row's real tokens, are visible to every real token, and end
up in the KV cache when decoding. Keys are used as learned, like cached keys: RoPE does not rotate
them again. Cross-attention gets no prefix: it already reads the encoder's output, which the
encoder's prefixes shape.

``reparameterize`` (the paper's training trick, on by default): the prefixes are not trained
directly but come out of an MLP, ``inputs (P, d_model) -> Linear(hidden_size) -> tanh -> Linear``
to every layer's keys and values, which the paper found trains more stably. ``merge`` runs the MLP
once and keeps its output as plain prefix parameters, so inference needs no MLP and the MLP's
parameters leave the state dict; ``unmerge`` puts the MLP back (the folded copy, and anything
trained into it since, is dropped). The removed MLP is held by the method object, not the model,
so a merged model saved and loaded elsewhere keeps only the folded prefixes: there the fold is
one-way. Without ``reparameterize`` the prefixes are the parameters and merge does nothing.
"""

from __future__ import annotations

import math
from contextlib import AbstractContextManager

import torch
from torch import nn

from llm_modules.peft.base import PeftMethod
from llm_modules.peft.prompt import check_count, track_added_keys
from llm_modules.peft.virtual_token_lm import install, virtual_token_host, virtual_tokens_disabled, virtual_tokens_of
from llm_modules.peft.virtual_tokens import VirtualTokens
from llm_modules.registry import PEFT_METHODS, ConfigError


class StackPrefix(nn.Module):
    """Keys and values for every layer of one stack, as a (layers, 2, kv_heads, P, head_dim)
    tensor: the ``prefix`` parameter, or the output of ``mlp`` over ``inputs``."""

    def __init__(self, stack: nn.Module, count: int, d_model: int, hidden_size: int | None):
        super().__init__()
        attn = stack.layers[0].attn
        self.layout = (len(stack.layers), 2, attn.n_kv_heads, count, attn.head_dim)
        self.count = count
        if hidden_size is None:
            self.inputs, self.mlp = None, None
            self.prefix = nn.Parameter(torch.randn(self.layout) * self._spread(stack, d_model))
        else:
            layers, _, heads, _, head_dim = self.layout
            self.inputs = nn.Parameter(torch.randn(count, d_model))
            self.mlp = nn.Sequential(
                nn.Linear(d_model, hidden_size), nn.Tanh(), nn.Linear(hidden_size, layers * 2 * heads * head_dim)
            )
            self.prefix = None

    @staticmethod
    def _spread(stack: nn.Module, d_model: int) -> torch.Tensor:
        """Per layer and for keys/values, the spread a projection gives a unit-RMS input, so plain
        prefixes start at the scale of the keys and values they sit beside (1 where the projection
        holds no float weight, e.g. a quantized one)."""

        def spread(projection: nn.Module) -> float:
            weight = getattr(projection, "weight", None)
            if not isinstance(weight, torch.Tensor) or not weight.is_floating_point():
                return 1.0
            return float(weight.detach().float().std()) * math.sqrt(d_model)

        values = [[spread(block.attn.k), spread(block.attn.v)] for block in stack.layers]
        return torch.tensor(values).view(len(stack.layers), 2, 1, 1, 1)

    def values(self) -> torch.Tensor:
        if self.prefix is not None:
            return self.prefix
        layers, _, heads, count, head_dim = self.layout
        return self.mlp(self.inputs).view(count, layers, 2, heads, head_dim).permute(1, 2, 3, 0, 4)

    def fold(self) -> tuple[nn.Parameter, nn.Module]:
        """Keep the MLP's output as the ``prefix`` parameter; returns what it replaced."""
        with torch.no_grad():
            folded = self.values().detach().contiguous().clone()
        removed = (self.inputs, self.mlp)
        self.inputs, self.mlp = None, None
        self.prefix = nn.Parameter(folded)
        return removed

    def unfold(self, removed: tuple[nn.Parameter, nn.Module]) -> None:
        """Put back what ``fold`` removed (on the device the prefix is on now)."""
        inputs, mlp = removed
        device = self.prefix.device
        self.prefix = None
        inputs.data = inputs.data.to(device)
        self.inputs, self.mlp = inputs, mlp.to(device)

    @property
    def folded(self) -> bool:
        return self.mlp is None


class KeyValuePrefix(VirtualTokens):
    """Key/value prefixes for some of a model's stacks, by stack name."""

    def __init__(self, stacks: dict[str, StackPrefix]):
        super().__init__()
        self.stacks = nn.ModuleDict(stacks)

    def num_virtual_tokens(self, stack: str) -> int:
        return self.stacks[stack].count if stack in self.stacks else 0

    def key_values(self, stack: str, batch: int) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
        if stack not in self.stacks:
            return None
        values = self.stacks[stack].values()
        return [(layer[0].expand(batch, -1, -1, -1), layer[1].expand(batch, -1, -1, -1)) for layer in values.unbind(0)]


@PEFT_METHODS.register("prefix")
class PrefixTuning(PeftMethod):
    """Prefix tuning: ``num_virtual_tokens`` learned keys/values in every self-attention layer.

    ``reparameterize`` trains them through an MLP of width ``hidden_size`` (default d_model);
    ``merge`` folds that MLP into plain prefixes (``unmerge`` restores it while this method object
    lives)."""

    def __init__(self, num_virtual_tokens: int = 20, reparameterize: bool = True, hidden_size: int | None = None):
        self.num_virtual_tokens = check_count("prefix", num_virtual_tokens)
        if not isinstance(reparameterize, bool):
            raise ConfigError(f"peft prefix: reparameterize must be true or false; got {reparameterize!r}")
        if hidden_size is not None and (isinstance(hidden_size, bool) or not isinstance(hidden_size, int) or hidden_size < 1):
            raise ConfigError(f"peft prefix: hidden_size must be a positive integer; got {hidden_size!r}")
        if hidden_size is not None and not reparameterize:
            raise ConfigError("peft prefix: hidden_size sizes the reparameterization MLP; set reparameterize: true or drop it")
        self.reparameterize, self.hidden_size = reparameterize, hidden_size
        self._removed: dict[str, tuple[nn.Parameter, nn.Module]] = {}

    def inject(self, model: nn.Module) -> None:
        host = virtual_token_host(model)
        table = host.embed.tokens.weight
        d_model = table.shape[1]
        width = (self.hidden_size or d_model) if self.reparameterize else None
        stacks = {
            name: StackPrefix(getattr(host, name), self.num_virtual_tokens, d_model, width)
            for name in host.stack_names if len(getattr(host, name).layers)
        }
        install(model, self.name or "prefix", KeyValuePrefix(stacks).to(device=table.device, dtype=table.dtype))

    def merge(self, model: nn.Module) -> None:
        """Fold the MLP into plain prefixes (nothing to do for plain or already folded ones)."""
        stacks = self._stacks(model)
        pending = {name: s for name, s in stacks.items() if not s.folded}
        if pending:
            self._removed.update(track_added_keys(self, model, lambda: {name: s.fold() for name, s in pending.items()}))

    def unmerge(self, model: nn.Module) -> None:
        if not self.reparameterize:
            return
        if not self._removed:
            raise ConfigError(
                "peft prefix: nothing to unmerge (not merged, or merged by another method object: the fold "
                "keeps no MLP in the model, so it is one-way there)"
            )
        stacks, removed = self._stacks(model), self._removed
        self._removed = {}
        track_added_keys(self, model, lambda: [stacks[name].unfold(parts) for name, parts in removed.items()])

    def is_merged(self, model: nn.Module) -> bool:
        """Folded: the state is the MLP's output, not what was trained (adapter files refuse it)."""
        return self.reparameterize and any(s.folded for s in self._stacks(model).values())

    def disabled(self, model: nn.Module) -> AbstractContextManager[None]:
        """No prefix in any self-attention for the block (merged or not: the base has none)."""
        return virtual_tokens_disabled(model)

    def _stacks(self, model: nn.Module) -> dict[str, StackPrefix]:
        prefix = virtual_tokens_of(model)
        if not isinstance(prefix, KeyValuePrefix):
            raise ConfigError("peft prefix: this model has no key/value prefixes; apply the method first")
        return dict(prefix.stacks.items())
