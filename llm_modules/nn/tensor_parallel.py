"""The tensor-parallel contract: how a module says it splits over a tensor-parallel group, or why not.

Each module that must be split (attention, a feed-forward block, a position encoding with per-head
state) answers ``tensor_parallel_plan()`` with a ``TensorParallelPlan`` or a ``TensorParallelRefusal``.
``training.parallel`` walks the model, asks every module that answers, and applies the answers; it
never looks at a module's type. Plain data and no ``torch.distributed`` import, so a plan can be read
and checked on a machine without a process group (the contract tests do), and ``nn`` stays free of
the training machinery.

What is not named by any plan (embeddings, norms, the head, a position table without per-head
state) is replicated over the group: always correct, only redundant. A module that *holds a part of
the per-head computation* but declares nothing would be split wrongly or not at all, so a parent names
such parts (``parts``) and a part without a plan is refused, naming the config field to change.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping

#: a direct ``nn.Linear``/``nn.Embedding`` child split along its output features (its weight's dim 0,
#: an embedding's dim 1): each rank computes its share of the outputs (Megatron's column parallel)
COLWISE = "colwise"
#: a direct ``nn.Linear`` child split along its input features: each rank takes the matching share of
#: the inputs and the partial outputs are summed over the group (row parallel)
ROWWISE = "rowwise"
STYLES = (COLWISE, ROWWISE)


@dataclass(frozen=True)
class Divisible:
    """A size that the tensor-parallel size must divide, and what to tell the user when it does not.

    ``field`` is the ModelConfig field that sets it (``d_ff``, ``n_heads``), ``what`` how the message
    names the size, ``fix`` what to change.
    """

    field: str
    value: int
    what: str
    fix: str

    def message(self, size: int) -> str:
        return (f"model.config.{self.field}: {self.what} {self.value} is not divisible by "
                f"tensor_parallel_size={size}; {self.fix} a multiple of {size}")


@dataclass(frozen=True)
class TensorParallelPlan:
    """How one module splits.

    ``layout``: direct children (by attribute name) and their style, ``COLWISE`` or ``ROWWISE``.
    ``divisible``: the sizes the split needs divisible by the group size (whole heads, whole rows).
    ``parts``: children that must declare plans of their own, mapped to the config field that
    chooses them (``{"ffn": "activation"}``), so a refusal can name what to change.
    ``shard_local``: for state that is no parameter (ALiBi's fixed slopes), ``shard_local(rank, size)``
    keeps this rank's share in place, matching the heads that the column split of q gives the rank.
    """

    layout: Mapping[str, str] = field(default_factory=dict)
    divisible: tuple[Divisible, ...] = ()
    parts: Mapping[str, str] = field(default_factory=dict)
    shard_local: Callable[[int, int], None] | None = None

    def __post_init__(self):
        bad = {name: style for name, style in self.layout.items() if style not in STYLES}
        if bad:
            raise ValueError(f"tensor-parallel layout styles are {STYLES}; got {bad}")

    def refusals(self, size: int) -> list[str]:
        """The messages of every size rule that ``size`` breaks (empty: it splits ``size`` ways)."""
        return [rule.message(size) for rule in self.divisible if rule.value % size]


@dataclass(frozen=True)
class TensorParallelRefusal:
    """A module that cannot be split: ``reason`` completes "<ClassName> ...", ``fix`` says what to do."""

    reason: str
    fix: str = "use data parallelism alone (tensor_parallel_size: 1; FSDP shards it)"


Answer = TensorParallelPlan | TensorParallelRefusal

#: the answer for a module that does not answer at all (a plugin's)
UNDECLARED = TensorParallelRefusal(
    "declares no tensor-parallel plan (no tensor_parallel_plan() method), so it cannot be split safely",
    "add a tensor_parallel_plan() to the component (see llm_modules.nn.tensor_parallel), or use data "
    "parallelism alone (tensor_parallel_size: 1; FSDP shards it)",
)


def plan_of(module) -> Answer | None:
    """The module's declared answer, or None when it declares none."""
    ask = getattr(module, "tensor_parallel_plan", None)
    return ask() if callable(ask) else None
