"""Memory savers applied to the torch model before training: freezing, activation checkpointing, compile.

All three act on the torch model from outside (the model code knows nothing of them), from
``LanguageModel.configure_model``: freezing and checkpointing before parallelism, so sharding sees
the final ``requires_grad`` flags and block wrappers; ``torch.compile`` after it, on the sharded
model. Gradient accumulation is Lightning's ``trainer.accumulate_grad_batches``; optimizer-state
offload is a DeepSpeed preset (``configs/strategies``).
"""

from __future__ import annotations

import fnmatch
import inspect
import logging
import re
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from llm_modules.nn.transformer import Stack
from llm_modules.registry import ConfigError

log = logging.getLogger("llm_modules.memory")

FIELD = "model.memory"


@dataclass
class MemoryConfig:
    """Plain data: what to trade for memory (``--model.memory.*`` on the command line).

    ``activation_checkpointing``: which blocks recompute their activations in the backward pass
    instead of keeping them: ``false`` (none), ``true`` or ``"all"``, ``"every:N"`` (blocks 0, N,
    2N, ...), or a list of block indices. It applies to every stack (encoder and decoder alike);
    an index counts blocks within a stack, and one that no stack reaches is refused (with an
    encoder shorter than its decoder, an index past the encoder applies to the decoder only).

    ``freeze_embeddings``: the token table (and token-type and learned absolute-position tables)
    stop training. With ``tie_embeddings`` the output head *is* the token table, so it freezes too.
    ``freeze_layers``: the first k blocks, in the order data flows through them (an
    encoder-decoder's encoder blocks first, then its decoder's). ``freeze_patterns``: shell-style
    patterns (``fnmatch``: ``*``, ``?``, ``[...]``) matched against the torch model's parameter
    names (``lm.model``'s: no ``model.`` prefix), e.g. ``stack.layers.*.attn.*``, ``head.*``,
    ``encoder.layers.0.*``; a tied head's weight matches by either name.
    Frozen parameters get no gradient and no optimizer state.

    ``compile``: ``torch.compile`` the torch model in place (parameter names do not change):
    ``true`` for the defaults, or a mapping of ``torch.compile`` keywords, e.g.
    ``{backend: inductor, mode: max-autotune}``.
    """

    activation_checkpointing: bool | str | list[int] = False
    freeze_embeddings: bool = False
    freeze_layers: int = 0
    freeze_patterns: list[str] = field(default_factory=list)
    compile: bool | dict[str, Any] = False

    def __post_init__(self) -> None:
        # Everything that can be checked without the model, so a typo fails when the config is read.
        checkpoint_spec(self.activation_checkpointing)
        if isinstance(self.freeze_layers, bool) or not isinstance(self.freeze_layers, int) or self.freeze_layers < 0:
            raise ConfigError(f"{FIELD}.freeze_layers must be an integer >= 0 (the first k blocks); got {self.freeze_layers!r}")
        if isinstance(self.freeze_patterns, str):
            self.freeze_patterns = [self.freeze_patterns]
        self.freeze_patterns = list(self.freeze_patterns)
        compile_options(self.compile)


# ---- activation checkpointing -----------------------------------------------------------------------------


def checkpoint_spec(spec: Any) -> tuple[str, Any]:
    """Normalise ``activation_checkpointing`` to ("none"|"all", None), ("every", N) or ("list", indices)."""
    fix = (f"{FIELD}.activation_checkpointing takes false, true, \"all\", \"every:N\" (N >= 1) or a list of "
           "block indices such as [0, 2]")
    if spec is None or spec is False or spec == []:
        return ("none", None)
    if spec is True:
        return ("all", None)
    if isinstance(spec, str):
        text = spec.strip().lower()
        if text in ("all", "true"):
            return ("all", None)
        if text in ("none", "false", ""):
            return ("none", None)
        match = re.fullmatch(r"every:\s*(\d+)", text)
        if match and int(match.group(1)) >= 1:
            return ("every", int(match.group(1)))
        raise ConfigError(f"{fix}; got {spec!r}")
    if isinstance(spec, (list, tuple)) and all(isinstance(i, int) and not isinstance(i, bool) for i in spec):
        if any(i < 0 for i in spec):
            raise ConfigError(f"{fix}; block indices count from 0, got {list(spec)}")
        return ("list", sorted(set(spec)))
    raise ConfigError(f"{fix}; got {spec!r}")


def checkpointed_blocks(spec: Any, n_blocks: int) -> list[int]:
    """The block indices of a stack of ``n_blocks`` that ``spec`` selects."""
    kind, value = checkpoint_spec(spec)
    if kind == "all":
        return list(range(n_blocks))
    if kind == "every":
        return list(range(0, n_blocks, value))
    if kind == "list":
        return [i for i in value if i < n_blocks]
    return []


def stacks_of(model: nn.Module) -> list[Stack]:
    """The model's stacks in data-flow order (an encoder-decoder's encoder first)."""
    return model.stacks()


def apply_activation_checkpointing(model: nn.Module, spec: Any) -> int:
    """Mark the selected blocks of every stack for recomputation; returns how many blocks."""
    stacks = stacks_of(model)
    kind, value = checkpoint_spec(spec)
    if kind == "list" and stacks:
        deepest = max(len(s.layers) for s in stacks)
        beyond = [i for i in value if i >= deepest]
        if beyond:
            counts = ", ".join(str(len(s.layers)) for s in stacks)
            raise ConfigError(
                f"{FIELD}.activation_checkpointing: block indices {beyond} do not exist (blocks per stack: "
                f"{counts}; indices count from 0); list indices below {deepest}, or use \"all\" / \"every:N\""
            )
    total = 0
    for stack in stacks:
        blocks = checkpointed_blocks(spec, len(stack.layers))
        stack.checkpoint_blocks(blocks)
        total += len(blocks)
    return total


# ---- freezing -----------------------------------------------------------------------------------------------


def embedding_parameters(model: nn.Module) -> list[nn.Parameter]:
    """What the embedding side holds: token and token-type tables, and learned absolute positions
    (an encoding that adds to the embeddings, as opposed to rotating queries or biasing scores)."""
    params = list(model.embed.parameters())
    for position in model.position_encodings():
        if position.embeds:
            params.extend(position.parameters())
    return params


def freeze(model: nn.Module, memory: MemoryConfig) -> list[str]:
    """Set ``requires_grad=False`` per ``memory``; returns a description of what was frozen."""
    done: list[str] = []
    if memory.freeze_embeddings:
        for p in embedding_parameters(model):
            p.requires_grad_(False)
        tied = " (and the output head, which is tied to them)" if _head_is_tied(model) else ""
        done.append("embeddings" + tied)
    if memory.freeze_layers:
        blocks = [block for stack in stacks_of(model) for block in stack.layers]
        if memory.freeze_layers > len(blocks):
            raise ConfigError(
                f"{FIELD}.freeze_layers={memory.freeze_layers} is more than the model's {len(blocks)} blocks; "
                f"choose at most {len(blocks)} (to freeze everything else too, use freeze_patterns)"
            )
        for block in blocks[: memory.freeze_layers]:
            block.requires_grad_(False)
        done.append(f"first {memory.freeze_layers} block(s)")
    if memory.freeze_patterns:
        named = list(model.named_parameters(remove_duplicate=False))
        for pattern in memory.freeze_patterns:
            hits = [p for name, p in named if fnmatch.fnmatchcase(name, pattern)]
            if not hits:
                examples = ", ".join(_example_names([name for name, _ in named]))
                raise ConfigError(
                    f"{FIELD}.freeze_patterns: {pattern!r} matches no parameter; patterns are shell-style "
                    f"(fnmatch) over the torch model's parameter names, e.g. {examples}"
                )
            for p in hits:
                p.requires_grad_(False)
        done.append("patterns " + ", ".join(memory.freeze_patterns))
    return done


def _head_is_tied(model: nn.Module) -> bool:
    head = getattr(model, "head", None)
    embed = getattr(model, "embed", None)
    proj = getattr(head, "proj", None)
    tokens = getattr(embed, "tokens", None)
    return proj is not None and tokens is not None and proj.weight is tokens.weight


def _example_names(names: list[str], limit: int = 6) -> list[str]:
    """A few parameter names across the model (first, a block's, last) for an error message."""
    if len(names) <= limit:
        return names
    step = max(1, len(names) // limit)
    return names[::step][: limit - 1] + [names[-1]]


def trainable_summary(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) distinct parameters (a tied table counts once)."""
    distinct = {id(p): p for p in model.parameters()}.values()
    return sum(p.numel() for p in distinct if p.requires_grad), sum(p.numel() for p in distinct)


# ---- compile ----------------------------------------------------------------------------------------------


def compile_options(spec: Any) -> dict[str, Any] | None:
    """``memory.compile`` as ``torch.compile`` keywords, or None for no compilation."""
    if spec is None or spec is False:
        return None
    if spec is True:
        return {}
    if not isinstance(spec, dict):
        raise ConfigError(
            f"{FIELD}.compile takes false, true, or a mapping of torch.compile keywords such as "
            f"{{backend: inductor, mode: max-autotune}}; got {spec!r}"
        )
    allowed = sorted(p for p in inspect.signature(torch.compile).parameters if p != "model")
    unknown = sorted(set(spec) - set(allowed))
    if unknown:
        raise ConfigError(f"{FIELD}.compile: unknown torch.compile keyword {unknown[0]!r}; keywords: {', '.join(allowed)}")
    backend = spec.get("backend")
    if isinstance(backend, str):
        from torch import _dynamo  # imported on demand: it is slow to import

        backends = _dynamo.list_backends(exclude_tags=())
        if backend not in backends:
            raise ConfigError(
                f"{FIELD}.compile.backend {backend!r} is not a torch.compile backend here; "
                f"common ones: inductor (default, needs a C compiler on CPU), aot_eager, eager"
            )
    return dict(spec)


def compile_model(model: nn.Module, memory: MemoryConfig) -> bool:
    """``torch.compile`` the model in place (``nn.Module.compile``), so state-dict keys keep their
    names and checkpoints stay interchangeable with uncompiled runs. Returns whether it compiled."""
    options = compile_options(memory.compile)
    if options is None:
        return False
    model.compile(**options)
    return True


# ---- all together -----------------------------------------------------------------------------------------


def apply_memory_savers(model: nn.Module, memory: MemoryConfig) -> None:
    """Freeze and checkpoint per ``memory`` (in place), and say how many parameters still train."""
    frozen = freeze(model, memory)
    trainable, total = trainable_summary(model)
    if frozen and trainable == 0:
        raise ConfigError(
            f"{FIELD}: every parameter is frozen ({'; '.join(frozen)}), so nothing would train; "
            "freeze fewer layers or patterns"
        )
    blocks = apply_activation_checkpointing(model, memory.activation_checkpointing)
    if frozen:
        _rank_zero_info(
            f"memory: training {trainable:,} of {total:,} parameters ({100 * trainable / max(total, 1):.1f}%); "
            f"frozen: {'; '.join(frozen)}"
        )
    if blocks:
        _rank_zero_info(f"memory: activation checkpointing on {blocks} block(s)")


def _rank_zero_info(message: str) -> None:
    """One line per run, not one per process."""
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    if getattr(rank_zero_only, "rank", 0) == 0:
        log.info(message)
