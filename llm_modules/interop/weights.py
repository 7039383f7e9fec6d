"""Weight names as tables, and the one converter that applies a table in both directions.

A family describes its checkpoint layout as a ``WeightTable``: entries that map our state-dict
names to HF names, non-layer ones as they are and per-layer ones with ``{i}`` (``Repeat``). How a
tensor changes on the way is declared in the entry (``Transform``): GPT-2's Conv1D transpose, the
q/k/v fusions of GPT-2 (side by side) and BLOOM (grouped per head), the rotary permutation that
exports interleaved RoPE as LLaMA's, transformers 5's fused MoE experts (``stacked``). A head tied
to the embedding is an entry too (``Tied``). Per-expert entries nest a second ``Repeat`` (``{j}``),
and tensors that checkpoints store in two layouts (per expert on the Hub, fused in memory) are
read from either and written in one (``Layouts``).

The converter accounts strictly: on import every HF tensor is read exactly once (except the
table's ``ignorable`` buffers), a missing one is named, and a tensor left over means config.json
and the weights disagree; on export every tensor of the model is written exactly once, and one
the family has no place for is refused rather than dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import torch

from llm_modules.registry import ConfigError

StateDict = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Transform:
    """One HF tensor <-> our tensors: ``split`` on import (one tensor -> a tuple, one per our
    name), ``join`` on export (the inverse)."""

    name: str
    split: Callable[[torch.Tensor], tuple[torch.Tensor, ...]]
    join: Callable[[tuple[torch.Tensor, ...]], torch.Tensor]


AS_IS = Transform("as is", lambda t: (t,), lambda ts: ts[0])

#: GPT-2's Conv1D keeps weights as (in, out), the transpose of nn.Linear's
TRANSPOSE = Transform("transposed", lambda t: (t.t(),), lambda ts: ts[0].t())


def side_by_side(parts: int | tuple[int, ...], dim: int, transpose: bool = False) -> Transform:
    """Tensors concatenated along ``dim`` (GPT-2's ``c_attn``: [q | k | v]): ``parts`` equal
    ones, or ones of the given sizes along ``dim`` (Phi-3's ``qkv_proj`` with fewer key/value
    heads), each transposed too when ``transpose`` (Conv1D)."""
    flip = (lambda t: t.t()) if transpose else (lambda t: t)
    count = parts if isinstance(parts, int) else len(parts)
    cut = (lambda t: t.chunk(parts, dim=dim)) if isinstance(parts, int) else (lambda t: t.split(list(parts), dim=dim))
    return Transform(
        f"{count} side by side on dim {dim}" + ("" if isinstance(parts, int) else f" (sizes {list(parts)})")
        + (", transposed" if transpose else ""),
        lambda t: tuple(flip(p) for p in cut(t)),
        lambda ts: torch.cat([flip(t) for t in ts], dim=dim),
    )


def grouped_per_head(n_heads: int, parts: int = 3) -> Transform:
    """``parts`` tensors interleaved per head along dim 0: rows (heads, parts, head_dim, ...), i.e.
    q, k, v of head 0, then of head 1, ... (BLOOM's ``query_key_value``)."""
    return Transform(
        f"{parts} grouped per head ({n_heads} heads)",
        lambda t: tuple(t.unflatten(0, (n_heads, parts, -1))[:, j].flatten(0, 1) for j in range(parts)),
        lambda ts: torch.stack([t.unflatten(0, (n_heads, -1)) for t in ts], dim=1).flatten(0, 2),
    )


def rotary_halves(n_heads: int) -> Transform:
    """Our interleaved-RoPE projection (rotary pairs adjacent: features 2j, 2j+1 of each head) <->
    HF LLaMA's (pairs in halves: j, j + head_dim/2): the output rows of each head reordered, so that
    q and k rotate the same pairs (the permutation Meta -> HF LLaMA conversions apply)."""
    return Transform(
        f"rotary pairs as halves ({n_heads} heads)",
        lambda t: (t.unflatten(0, (n_heads, 2, -1)).transpose(1, 2).flatten(0, 2),),
        lambda ts: ts[0].unflatten(0, (n_heads, -1, 2)).transpose(1, 2).flatten(0, 2),
    )


def stacked(count: int, parts: int = 1) -> Transform:
    """``count`` tensors stacked along a new dim 0, each the concatenation of ``parts`` of ours
    along its dim 0: transformers 5's fused experts (``gate_up_proj`` (E, 2F, D): each expert's
    gate then up; ``down_proj`` (E, D, F)). Our names run expert by expert, part by part."""
    return Transform(
        f"{count} stacked" + (f", {parts} concatenated in each" if parts > 1 else ""),
        lambda t: tuple(p for each in t.unbind(0) for p in each.chunk(parts, dim=0)),
        lambda ts: torch.stack([torch.cat(ts[k: k + parts], dim=0) for k in range(0, len(ts), parts)]),
    )


@dataclass(frozen=True)
class Map:
    """Our tensor(s) ``ours`` <-> the HF tensor ``theirs``, through ``transform``.

    ``read``: the HF names tried on import, in order (default: ``theirs``); the first present is
    used and the others present are copies of it, read and dropped. ``copies``: HF names that also
    get the tensor on export (a format that stores it twice). ``fill``: what to export when the
    model has no such tensor (an all-zero table the HF format always has), from the state dict.
    """

    ours: str | tuple[str, ...]
    theirs: str
    transform: Transform = AS_IS
    read: tuple[str, ...] = ()
    copies: tuple[str, ...] = ()
    fill: Callable[[StateDict], torch.Tensor] | None = None

    @property
    def our_names(self) -> tuple[str, ...]:
        return (self.ours,) if isinstance(self.ours, str) else self.ours

    def at(self, i: int, index: str = "i") -> "Map":
        fmt = lambda s: s.replace(f"{{{index}}}", str(i))  # noqa: E731
        return Map(tuple(map(fmt, self.our_names)), fmt(self.theirs), self.transform, tuple(map(fmt, self.read)),
                   tuple(map(fmt, self.copies)), self.fill)

    def load(self, reader: "Reader", state: StateDict) -> None:
        names = self.read or (self.theirs,)
        found = next((n for n in names if reader.has(n)), names[0])
        tensors = self.transform.split(reader.take(found))
        for name in names:
            if name != found and reader.has(name):
                reader.take(name)  # a stored copy
        for name, tensor in zip(self.our_names, tensors, strict=True):
            put(state, name, tensor, "the table maps two HF tensors to our")

    def save(self, state: StateDict, out: StateDict, used: set[str]) -> None:
        missing = [n for n in self.our_names if n not in state]
        if missing and self.fill is None:
            raise ConfigError(
                f"cannot export {self.theirs!r}: the model has no tensor {missing[0]!r} (its weights are not a "
                "plain float model of its config, e.g. quantized); export the float checkpoint instead"
            )
        if missing:
            tensor = self.fill(state)
        else:
            tensor = self.transform.join(tuple(state[n] for n in self.our_names))
            used.update(self.our_names)
        put(out, self.theirs, tensor, "the table writes two of our tensors to HF")
        for copy in self.copies:
            put(out, copy, tensor.clone(), "the table writes two of our tensors to HF")


@dataclass(frozen=True)
class Tied:
    """Our ``ours`` is the same tensor as our ``source`` (a head tied to the embedding): nothing of
    its own to read. ``stored_copy``: the HF name under which some checkpoints store it anyway
    (dropped on import); ``export_copy``: write that copy on export (a format that needs it)."""

    ours: str
    source: str
    stored_copy: str | None = None
    export_copy: bool = False

    def at(self, i: int, index: str = "i") -> "Tied":
        return self

    def load(self, reader: "Reader", state: StateDict) -> None:
        put(state, self.ours, state[self.source], "the table maps two HF tensors to our")
        if self.stored_copy and reader.has(self.stored_copy):
            reader.take(self.stored_copy)

    def save(self, state: StateDict, out: StateDict, used: set[str]) -> None:
        used.add(self.ours)
        if self.export_copy:
            # a copy: safetensors refuses two names for one storage
            put(out, self.stored_copy, state[self.ours].clone(), "the table writes two of our tensors to HF")


@dataclass(frozen=True)
class Repeat:
    """``entries`` once per ``i`` in ``range(count)`` (names hold ``{i}``): once per layer, and
    nested with another ``index`` once per expert of a layer (``{j}``)."""

    count: int
    entries: tuple["Entry | Repeat", ...]
    index: str = "i"

    def at(self, i: int, index: str = "i") -> "Repeat":
        return Repeat(self.count, tuple(e.at(i, index) for e in self.entries), self.index)

    def expanded(self) -> Iterator["Map | Tied | Layouts"]:
        for i in range(self.count):
            for entry in self.entries:
                placed = entry.at(i, self.index)
                yield from placed.expanded() if isinstance(placed, Repeat) else (placed,)


@dataclass(frozen=True)
class Layouts:
    """Tensors that checkpoints store in either of two layouts: ``written`` (what export writes)
    or ``alternative``, read instead when the checkpoint holds the alternative's first HF tensor.
    Transformers 5 keeps MoE experts fused in memory (one (E, 2F, D) ``gate_up_proj`` per layer)
    and loads them from the per-expert files of the Hub as well as from that fused layout."""

    written: tuple["Entry | Repeat", ...]
    alternative: tuple["Entry | Repeat", ...]

    def at(self, i: int, index: str = "i") -> "Layouts":
        return Layouts(tuple(e.at(i, index) for e in self.written), tuple(e.at(i, index) for e in self.alternative))

    def load(self, reader: "Reader", state: StateDict) -> None:
        alternative = list(_flat(self.alternative))
        probe = next(e for e in alternative if isinstance(e, Map)).theirs
        for entry in alternative if reader.has(probe) else _flat(self.written):
            entry.load(reader, state)

    def save(self, state: StateDict, out: StateDict, used: set[str]) -> None:
        for entry in _flat(self.written):
            entry.save(state, out, used)


Entry = Map | Tied | Layouts


def _flat(entries: Iterable[Entry | Repeat]) -> Iterator[Entry]:
    for entry in entries:
        yield from entry.expanded() if isinstance(entry, Repeat) else (entry,)


@dataclass(frozen=True)
class WeightTable:
    """A family's checkpoint layout for one config (see the module docstring).

    ``prefix``: the base model's prefix (``model.``), which checkpoints saved from the base model
    alone lack; ``ignorable``: name endings of HF buffers that are not weights; ``renames``: old
    name endings read as new ones (TensorFlow-converted BERT's ``gamma``/``beta``)."""

    family: str
    entries: tuple[Entry | Repeat, ...]
    prefix: str = ""
    ignorable: tuple[str, ...] = ()
    renames: tuple[tuple[str, str], ...] = field(default=())

    def expanded(self) -> Iterator[Entry]:
        return _flat(self.entries)

    def from_hf(self, weights: StateDict) -> StateDict:
        """HF tensors -> our state dict; every HF tensor read exactly once."""
        reader = Reader(self._renamed(weights), self)
        state: StateDict = {}
        for entry in self.expanded():
            entry.load(reader, state)
        reader.check_all_used()
        return state

    def to_hf(self, state: StateDict) -> StateDict:
        """Our state dict -> HF tensors; every tensor of ours written exactly once."""
        out: StateDict = {}
        used: set[str] = set()
        for entry in self.expanded():
            entry.save(state, out, used)
        left = sorted(set(state) - used)
        if left:
            raise ConfigError(
                f"cannot export as {self.family}: the model has {len(left)} tensor(s) the {self.family} format has "
                f"no place for, e.g. {left[:3]}; export with --format ckpt instead"
            )
        return out

    def _renamed(self, weights: StateDict) -> StateDict:
        if not self.renames:
            return dict(weights)
        renamed = {}
        for name, tensor in weights.items():
            for old, new in self.renames:
                if name.endswith(old):
                    name = name[: -len(old)] + new
                    break
            renamed[name] = tensor
        return renamed


class Reader:
    """HF tensors read strictly (see the module docstring). A name with the table's prefix is
    also found without it."""

    def __init__(self, weights: StateDict, table: WeightTable):
        self.weights, self.table = weights, table
        self.used: set[str] = set()

    def _stored(self, name: str) -> str | None:
        candidates: Iterable[str] = (name,)
        prefix = self.table.prefix
        if prefix and name.startswith(prefix):
            candidates = (name, name[len(prefix):])
        return next((c for c in candidates if c in self.weights), None)

    def has(self, name: str) -> bool:
        return self._stored(name) is not None

    def take(self, name: str) -> torch.Tensor:
        stored = self._stored(name)
        if stored is None:
            raise ConfigError(
                f"{self.table.family} checkpoint: tensor {name!r} is missing; the weights do not match config.json"
            )
        if stored in self.used:
            raise ConfigError(f"{self.table.family} weight table reads {stored!r} twice")
        self.used.add(stored)
        return self.weights[stored]

    def check_all_used(self) -> None:
        left = sorted(
            k for k in self.weights if k not in self.used and not any(k.endswith(s) for s in self.table.ignorable)
        )
        if left:
            raise ConfigError(
                f"{self.table.family} checkpoint: {len(left)} tensor(s) that config.json does not account for, "
                f"e.g. {left[:3]}; the weights do not match config.json"
            )


def put(target: StateDict, name: str, tensor: torch.Tensor, why: str) -> None:
    """``target[name] = tensor``, refusing a second tensor under one name (a table error)."""
    if name in target:
        raise ConfigError(f"weight table error: {why} {name!r}")
    target[name] = tensor
