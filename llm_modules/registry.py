"""Component registries: the names that configs store, and the plugins that add to them.

A config slot holds plain data: a name (``"rmsnorm"``) or a mapping with a ``name`` key and the
component's own keyword arguments (``{"name": "rmsnorm", "eps": 1e-6}``). The registry turns that
into an object, checking the extra keys against the component's signature, so that a typo is an
error at build time rather than a silently ignored option.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import inspect
import logging
import os
import sys
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Callable, Iterable, Iterator, Mapping

log = logging.getLogger(__name__)

PLUGIN_GROUP = "llm_modules.plugins"


class ConfigError(ValueError):
    """A configuration value is wrong; the message names the field and how to fix it."""


def did_you_mean(value: str, choices: Iterable[str], cutoff: float = 0.6) -> str:
    """`` (did you mean 'X'?)`` for the closest of ``choices`` to ``value``, or nothing: the hint every
    error about a misspelt name carries."""
    close = difflib.get_close_matches(str(value), list(choices), n=1, cutoff=cutoff)
    return f" (did you mean {close[0]!r}?)" if close else ""


@dataclass(frozen=True)
class Entry:
    """One registered component: what builds it, what it is for, and who provides it."""

    name: str
    factory: Callable[..., Any]
    provider: str

    @property
    def doc(self) -> str:
        text = inspect.getdoc(self.factory) or ""
        return text.strip().splitlines()[0] if text.strip() else ""


def split_spec(spec: Any, slot: str) -> tuple[str, dict[str, Any]]:
    """Split a slot value into ``(name, kwargs)``; accepts a name or ``{name: ..., **kwargs}``."""
    if isinstance(spec, str):
        return spec.strip().lower(), {}
    if isinstance(spec, Mapping):
        if "name" not in spec:
            raise ConfigError(f"{slot}: a mapping needs a 'name' key, e.g. {{name: ..., ...}}; got {dict(spec)!r}")
        kwargs = {k: v for k, v in spec.items() if k != "name"}
        return str(spec["name"]).strip().lower(), kwargs
    raise ConfigError(f"{slot}: expected a component name or a mapping with 'name'; got {spec!r}")


def _provider_of(obj: Any) -> str:
    module = getattr(obj, "__module__", "") or ""
    top = module.split(".")[0]  # a plugin named llm_modules_* is not llm_modules itself
    return top or "unknown"


class Registry:
    """Named components for one slot of the model config (norm, attention, ...)."""

    def __init__(self, slot: str, description: str = ""):
        self.slot = slot
        self.description = description
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, *, provider: str | None = None) -> Callable[[Callable], Callable]:
        """Decorator: ``@NORMS.register("rmsnorm")`` above a class or factory function."""
        key = name.strip().lower()
        if not key or key != name or not all(c.isalnum() or c in "_-" for c in key):
            raise ValueError(f"{self.slot} names are lowercase letters, digits, '-' and '_'; got {name!r}")

        def decorator(factory: Callable) -> Callable:
            existing = self._entries.get(key)
            if existing is not None and existing.factory is not factory:
                raise ValueError(
                    f"{self.slot} {key!r} is already registered by {existing.provider}; pick another name"
                )
            self._entries[key] = Entry(key, factory, provider or _provider_of(factory))
            return factory

        return decorator

    def unregister(self, name: str) -> None:
        """Remove a name (for tests and for plugins that replace a component)."""
        self._entries.pop(name, None)

    def names(self) -> list[str]:
        load_plugins()
        return sorted(self._entries)

    def entries(self) -> list[Entry]:
        load_plugins()
        return [self._entries[n] for n in sorted(self._entries)]

    def __contains__(self, name: object) -> bool:
        load_plugins()
        return isinstance(name, str) and name.lower() in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def get(self, name: str) -> Entry:
        """The entry for ``name``; an unknown name raises ConfigError with the closest match."""
        load_plugins()
        key = name.strip().lower()
        if key in self._entries:
            return self._entries[key]
        choices = sorted(self._entries)
        hint = did_you_mean(key, choices, cutoff=0.5)
        raise ConfigError(f"unknown {self.slot} {name!r}{hint}; choices: {', '.join(choices)}")

    def validate(self, spec: Any) -> tuple[Entry, dict[str, Any]]:
        """Check a slot value without building it: the name exists and the kwargs fit the signature."""
        name, kwargs = split_spec(spec, self.slot)
        entry = self.get(name)
        params = _parameters(entry.factory)
        if params is not None:
            allowed = sorted(params)
            unknown = [k for k in kwargs if k not in allowed]
            if unknown:
                hint = did_you_mean(unknown[0], allowed, cutoff=0.5)
                options = ", ".join(allowed) if allowed else "none"
                raise ConfigError(
                    f"{self.slot} {name!r} has no option {unknown[0]!r}{hint}; its options: {options}"
                )
        return entry, kwargs

    def build(self, spec: Any, **provided: Any) -> Any:
        """Build a component from a slot value.

        ``provided`` are the arguments the model supplies (dim, n_heads, eps, ...); a component
        receives only those its signature names, so it declares what it needs and nothing more.
        Keys in the slot value override provided ones (``{name: rmsnorm, eps: 1e-6}``).
        """
        entry, kwargs = self.validate(spec)
        params = _parameters(entry.factory)
        supplied = provided if params is None else {k: v for k, v in provided.items() if k in params}
        try:
            return entry.factory(**{**supplied, **kwargs})
        except TypeError as err:
            raise ConfigError(f"{self.slot} {entry.name!r}: {err}") from err


def _parameters(factory: Callable) -> frozenset[str] | None:
    """Keyword parameter names of a factory, or None when it takes ``**kwargs`` (anything goes).
    Read once per factory: a model builds some components thousands of times (the experts of a
    mixture), and reading a signature costs more than building a small module on the meta device."""
    try:
        return _cached_parameters(factory)
    except TypeError:  # an unhashable callable: read it every time
        return _read_parameters(factory)


def _read_parameters(factory: Callable) -> frozenset[str] | None:
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):
        return None
    names = set()
    for p in sig.parameters.values():
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            return None
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY):
            names.add(p.name)
    names.discard("self")
    return frozenset(names)


_cached_parameters = functools.lru_cache(maxsize=256)(_read_parameters)


NORMS = Registry("norm", "normalization layers")
RESIDUALS = Registry("residual", "how sublayers, norms and the residual stream are wired")
ACTIVATIONS = Registry("activation", "feed-forward blocks, named by their activation")
POSITIONS = Registry("position", "position encodings")
ATTENTIONS = Registry("attention", "attention backends")

# The slots of a ModelConfig (each a field of the config, validated when the config is).
MODEL_REGISTRIES: dict[str, Registry] = {r.slot: r for r in (NORMS, RESIDUALS, ACTIVATIONS, POSITIONS, ATTENTIONS)}
# Fine-tuning methods: the ``peft`` option of a LanguageModel, not part of the architecture.
PEFT_METHODS = Registry("peft", "parameter-efficient fine-tuning methods")
REGISTRIES: dict[str, Registry] = {**MODEL_REGISTRIES, PEFT_METHODS.slot: PEFT_METHODS}

_plugins_loaded = False
_loaded_modules: set[str] = set()
plugin_errors: dict[str, str] = {}


def load_plugins(extra: list[str] | tuple[str, ...] = ()) -> dict[str, str]:
    """Import every ``llm_modules.plugins`` entry point once, and any extra modules: the one place
    plugins load, whether named by an entry point, a config's ``plugins:`` list or ``--plugins``.

    Built-in components are not loaded here: the packages that define them (``llm_modules.nn``,
    ``llm_modules.peft``) register them when imported, and the code that looks names up imports
    those packages, so this bottom layer imports none of them. Extra modules are searched on
    ``sys.path`` and then in the working directory (appended, so it never shadows an installed
    package: the console script does not put it on the path, ``python -m`` does).
    A plugin that fails to import is reported (logged and returned by name) and does not stop
    the others; a missing module named explicitly in ``extra`` is an error, since a user asked for it.
    """
    global _plugins_loaded
    if not _plugins_loaded:
        _plugins_loaded = True
        for ep in metadata.entry_points(group=PLUGIN_GROUP):
            try:
                ep.load()
                _loaded_modules.add(ep.value)
            except Exception as err:  # a broken plugin must not break the rest
                plugin_errors[ep.name] = f"{type(err).__name__}: {err}"
                # One line on stderr; the log record is debug-level so an unconfigured logging
                # module (whose last-resort handler prints warnings) does not print it twice.
                log.debug("llm-modules plugin %r (%s) failed to load: %s", ep.name, ep.value, err)
                print(f"warning: llm-modules plugin {ep.name!r} failed to load: {err}", file=sys.stderr)
    for module in extra:
        if module in _loaded_modules:
            continue
        cwd = os.getcwd()
        if cwd not in sys.path and "" not in sys.path:
            sys.path.append(cwd)
        try:
            importlib.import_module(module)
        except ImportError as err:
            raise ConfigError(f"plugins: cannot import {module!r} ({err}); check the module path") from err
        _loaded_modules.add(module)
    return dict(plugin_errors)

