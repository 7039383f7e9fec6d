"""jsonargparse's parse errors for ``fit | validate | test | predict`` as one line each.

jsonargparse reports a bad value deep inside a class (``--model.config.d_modle 64``) as a usage
block followed by a nested dump of every Union alternative it tried (~50 lines). The useful part
is one leaf of that dump: which key, what went wrong, what was given. ``one_line`` turns the
parsers' errors into exceptions, and ``shape`` reads the dump back into the project's error style:
the option, the fix, and the closest match among the keys, choices, classes or presets that the
parser would have accepted (``unknown option 'trainer.max_step' (did you mean 'trainer.max_steps'?)``).
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import inspect
import re
from dataclasses import dataclass, field
from typing import Iterable, Iterator

from llm_modules.registry import ConfigError, did_you_mean

MAX_LISTED = 40  # choices beyond this are left to --help


@contextlib.contextmanager
def one_line(parser, subcommands: dict, args) -> Iterator[None]:
    """Parse errors of ``parser`` and its ``subcommands`` parsers (name -> parser) raise a ConfigError
    with one line instead of printing usage and exiting; --help and --print_config still exit 0."""
    from jsonargparse import ArgumentError

    for each in (parser, *subcommands.values()):
        each.exit_on_error = False
    command = next((a for a in (args or []) if isinstance(a, str) and a in subcommands), "fit")
    try:
        yield
    except ArgumentError as err:
        try:
            line = shape(str(err), parser_keys([subcommands.get(command, parser)]), command)
        except Exception:  # noqa: BLE001 - a message this module cannot read is still one line, never a traceback
            line = " ".join(str(err).split())
        raise ConfigError(line) from None


# ---- reading jsonargparse's nested message ----------------------------------------------------------------

_STRUCTURE = ("Does not validate against", "Subtypes:", "Errors:", "Given value type:")
_NONE = "Expected a <class 'NoneType'>"


@dataclass
class Leaf:
    """One error line of the dump with what encloses it: the keys (outermost first), the innermost
    class being configured, the Union's subtypes and the value given at the innermost key."""

    text: str
    keys: list[str] = field(default_factory=list)
    class_path: str | None = None
    subtypes: str = ""
    given: str | None = None

    @property
    def key(self) -> str:
        return ".".join(self.keys)


def leaves(message: str) -> list[Leaf]:
    """Every error line of a (possibly nested) jsonargparse message with its context."""
    lines = message.splitlines()
    stack: list[tuple[int, str, str]] = []  # (indent, kind, value), kind: key | class | subtypes
    found: list[tuple[Leaf, list[tuple[int, str, str]]]] = []
    for line in lines:
        text = line.strip()
        if not text:
            continue
        indent = len(line) - len(line.lstrip(" -"))
        # Deeper entries end here; so does a sibling key or class, but not the Union's subtypes,
        # whose siblings are its "Errors:" and "Given value" lines.
        while stack and (stack[-1][0] > indent or (stack[-1][0] == indent and stack[-1][1] != "subtypes")):
            stack.pop()
        text = text.lstrip("- ").strip()
        if m := re.match(r'Parser key "([^"]+)":$', text):
            stack.append((indent, "key", m.group(1)))
        elif m := re.match(r"Problem with given class_path '([^']+)':$", text):
            stack.append((indent, "class", m.group(1)))
        elif text.startswith("Subtypes:"):
            stack.append((indent, "subtypes", text.removeprefix("Subtypes:").strip()))
        elif text.startswith("Given value:"):
            # The value belongs to the key that encloses it: attach it to the leaves found under it.
            value = text.removeprefix("Given value:").strip()
            depth = sum(1 for s in stack if s[1] == "key" and s[0] < indent)
            for leaf, _ in found:
                if leaf.given is None and len(leaf.keys) == depth:
                    leaf.given = value
        elif text == _NONE or text.startswith(_STRUCTURE):
            continue
        else:
            context = [s for s in stack if s[0] < indent]
            leaf = Leaf(text, [v for _, k, v in context if k == "key"])
            leaf.class_path = next((v for _, k, v in reversed(context) if k == "class"), None)
            leaf.subtypes = next((v for _, k, v in reversed(context) if k == "subtypes"), "")
            found.append((leaf, context))
    return [leaf for leaf, _ in found]


def _deepest(found: list[Leaf]) -> Leaf:
    """The most specific error: the one under the most keys; alternatives that merely failed
    ("Expected a path but ...", the config-file reading of a value) lose ties."""
    def rank(leaf: Leaf) -> tuple[int, int]:
        return (len(leaf.keys) + (leaf.class_path is not None), not leaf.text.startswith("Expected a path but"))

    return max(found, key=rank)


# ---- what the parser would have accepted ------------------------------------------------------------------


def _import(path: str):
    module, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return None


def class_options(class_path: str | None) -> list[str]:
    """The init parameters a class accepts (what jsonargparse offers as its options)."""
    cls = _import(class_path) if class_path else None
    if cls is None:
        return []
    names: list[str] = []
    for klass in inspect.getmro(cls) if inspect.isclass(cls) else [cls]:
        try:
            params = inspect.signature(klass.__init__ if inspect.isclass(klass) else klass).parameters.values()
        except (TypeError, ValueError):
            continue
        names += [p.name for p in params if p.name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            break  # **kwargs pass on to the base class: keep collecting
    return list(dict.fromkeys(names))


def _subtype_classes(subtypes: str) -> list[type]:
    return [c for c in (_import(p) for p in re.findall(r"<class '([\w.]+)'>", subtypes)) if inspect.isclass(c)
            and c is not type(None)]


def subclass_names(bases: Iterable[type]) -> list[str]:
    """Short names of the public, concrete-looking subclasses of ``bases`` (what ``--model NAME`` may name)."""
    seen: dict[str, None] = {}
    todo = list(bases)
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        if not cls.__name__.startswith("_") and ".tests" not in cls.__module__:
            seen[cls.__name__] = None
    return sorted(seen)


def literal_choices(text: str) -> list[str]:
    """Every value of every ``typing.Literal[...]`` mentioned in ``text``, as strings, in order."""
    values: dict[str, None] = {}
    for inner in re.findall(r"Literal\[([^\]]*)\]", text):
        try:
            parsed = ast.literal_eval(f"[{inner}]")
        except (ValueError, SyntaxError):
            continue
        values.update((str(v), None) for v in parsed)
    return list(values)


def parser_keys(parsers) -> list[str]:
    """Dotted option names of the parsers (``trainer.max_steps``, ``data``, ...)."""
    keys: dict[str, None] = {}
    for parser in parsers:
        for action in getattr(parser, "_actions", []):
            dest = getattr(action, "dest", "")
            if dest and dest not in ("help", "config", "print_config") and not dest.startswith("_"):
                keys[dest] = None
    return list(keys)


def listing(choices: list[str], what: str = "choices") -> str:
    if not choices or len(choices) > MAX_LISTED:
        return ""
    return f"; {what}: {', '.join(choices)}"


# ---- the one line -----------------------------------------------------------------------------------------

_TYPES = {  # type name -> (what it is called, what to give)
    "int": ("an integer", "a whole number, e.g. 64"),
    "float": ("a number", "a number, e.g. 3e-4"),
    "bool": ("a boolean", "true or false"),
}


def _given_value(leaf: Leaf) -> str | None:
    given = leaf.given
    if given is None:
        return None
    if m := re.match(r"NestedArg\(key='[^']*', val='(.*)'\)$", given):
        return m.group(1)
    return given


def shape(message: str, keys: list[str] = (), command: str = "fit") -> str:
    """One line for a jsonargparse error ``message`` of ``llm-modules COMMAND``, whose parser has
    the options ``keys`` (dotted)."""
    text = message.strip()
    help_command = f"llm-modules {command} --help"
    if m := re.match(r"Subcommand '\w+' does not accept options? '?([^']+)'?$", text):
        return _unknown(m.group(1), list(keys), help_command)
    if m := re.match(r"unrecognized arguments: (.*)$", text, re.IGNORECASE):
        first = m.group(1).split()[0]
        return _unknown(first.lstrip("-").split("=", 1)[0], list(keys), help_command)
    found = leaves(text)
    if not found:
        return " ".join(line.strip() for line in text.splitlines() if line.strip())
    leaf = _deepest(found)
    where = leaf.key or "the configuration"

    if m := re.match(r"Option '([^']+)' is not accepted", leaf.text):
        options = class_options(leaf.class_path)
        name = leaf.class_path.rpartition(".")[2] if leaf.class_path else ""
        key = f"{leaf.key}.{m.group(1)}" if leaf.key else m.group(1)
        hint = did_you_mean(m.group(1), options).replace("'", f"'{leaf.key}." if leaf.key else "'", 1)
        return f"unknown option {key!r}{hint}{listing(options, f'options of {name}' if name else 'options')}"

    typed = [(m, f) for f in found if f.key == leaf.key
             and (m := re.match(r"Expected a <class '(\w+)'>(?:\. Got value: (.*))?$", f.text))]
    if typed and not literal_choices(leaf.subtypes):
        kinds = list(dict.fromkeys(m.group(1) for m, _ in typed))
        value = next((m.group(2) for m, _ in typed if m.group(2) is not None), None) or _given_value(leaf)
        called = " or ".join(_TYPES.get(k, (f"a {k}",))[0] for k in kinds)
        fix = " or ".join(_TYPES.get(k, ("", f"a {k}"))[1] for k in kinds)
        return f"{where}: {value!r} is not {called}; give {fix}"

    choices = literal_choices(leaf.subtypes) or literal_choices(" ".join(f.text for f in found if f.key == leaf.key))
    value = _given_value(leaf)
    if choices and value is not None:
        return f"{where}: {value!r} is not one of the choices{did_you_mean(value, choices)}{listing(choices)}"

    if m := re.match(r"(?:Expected a dot import path string|Unexpected import path format|Import path) ?:? ?(\S+)",
                     leaf.text) or re.match(r"Expected a path but (\S+) either not accessible", leaf.text):
        return _unknown_class(where, value or m.group(1), leaf.subtypes)

    fallback = leaf.text if not value else f"{leaf.text} (given {value!r})"
    return f"{leaf.key}: {fallback}" if leaf.key else f"{fallback}; see {help_command}"


def _unknown(key: str, keys: list[str], help_command: str) -> str:
    section = key.rpartition(".")[0]
    same = [k for k in keys if k.rpartition(".")[0] == section] or keys
    hint = did_you_mean(key, same) or did_you_mean(key, keys)
    return f"unknown option {key!r}{hint}; see {help_command} for the options"


def _unknown_class(where: str, value: str, subtypes: str) -> str:
    """A value that is neither a class nor a readable file, where a class (or a preset) belongs."""
    from llm_modules.config import ModelConfig, preset_names

    classes = _subtype_classes(subtypes)
    looks_like_file = "/" in value or value.endswith((".yaml", ".yml", ".json"))
    if ModelConfig in classes:
        presets = preset_names()
        # every preset, however many: the one place a user sees the names without opening the docs
        every = f"; presets: {', '.join(presets)}"
        if looks_like_file:
            return f"{where}: {value!r} is not a readable file; give a YAML file or a preset{every}"
        return f"{where}: {value!r} is neither a preset nor a YAML file{did_you_mean(value, presets)}{every}"
    if looks_like_file:
        return f"{where}: {value!r} is not a readable file; check the path"
    names = [n for n in subclass_names(classes) if n not in {c.__name__ for c in classes}]
    short = value.rpartition(".")[2]
    return (f"{where}: unknown class {value!r}{did_you_mean(short, names)}"
            f"{listing(names, 'classes')} (or give a full import path)")
