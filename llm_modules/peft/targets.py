"""Which layers a PEFT method adapts: shell-style patterns over module names, and module surgery.

Patterns (``fnmatch``) match the whole dotted name that ``model.named_modules()`` gives, so
``"*.q"`` is every query projection and ``"decoder.*.ffn.*"`` every feed-forward matrix of a T5
decoder. A pattern that matches nothing is an error rather than a silently smaller adapter: a
typo would otherwise train a method that touches fewer layers than the config says.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from fnmatch import fnmatchcase

from torch import nn

from llm_modules.registry import ConfigError


def as_patterns(value: str | Iterable[str], option: str) -> list[str]:
    """One pattern or a list of them, as a list of non-empty strings (what a config may hold)."""
    patterns = [value] if isinstance(value, str) else list(value)
    if not patterns or not all(isinstance(p, str) and p.strip() for p in patterns):
        raise ConfigError(f"{option}: expected a non-empty list of module-name patterns like ['*.q', '*.v']; got {value!r}")
    return [p.strip() for p in patterns]


def _examples(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def match_modules(
    model: nn.Module, patterns: list[str], option: str, kind: type[nn.Module] = nn.Linear
) -> list[tuple[str, nn.Module]]:
    """Modules of type ``kind`` whose names match any pattern, in model order.

    Every pattern must match at least one such module; the error names ``option`` and shows
    what the names look like, so the fix can be read off the message.
    """
    candidates = [(name, module) for name, module in model.named_modules() if name and isinstance(module, kind)]
    names = [name for name, _ in candidates]
    for pattern in patterns:
        if any(fnmatchcase(name, pattern) for name in names):
            continue
        hint = ""
        if any(name.rsplit(".", 1)[-1] == pattern for name in names):
            hint = f" (patterns match the whole name: try '*.{pattern}')"
        elif any(fnmatchcase(name, pattern) for name, _ in model.named_modules() if name):
            hint = f" (it matches modules that are not {kind.__name__} layers)"
        raise ConfigError(
            f"{option}: pattern {pattern!r} matches no {kind.__name__} layer{hint}; "
            f"the model's {kind.__name__} layers are named like {_examples(names)}"
        )
    return [(name, module) for name, module in candidates if any(fnmatchcase(name, p) for p in patterns)]


def shared_parameter_ids(model: nn.Module) -> set[int]:
    """Ids of parameters held by more than one module (a head tied to the token embedding)."""
    counts = Counter(id(p) for module in model.modules() for p in module._parameters.values() if p is not None)
    return {pid for pid, n in counts.items() if n > 1}


def refuse_shared(matched: list[tuple[str, nn.Module]], model: nn.Module, option: str) -> None:
    """A layer whose weight is shared (tied head) cannot be adapted on its own: merging would also
    change the embedding that shares the matrix."""
    shared = shared_parameter_ids(model)
    tied = [name for name, module in matched if id(module.weight) in shared]
    if tied:
        raise ConfigError(
            f"{option}: {', '.join(tied)} shares its weight with another module (tied embeddings); "
            "adapting it would also change the embedding; leave it out of the patterns"
        )


def set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    """Put ``module`` where ``name`` was (its parent's attribute), so every other name stays put."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)
