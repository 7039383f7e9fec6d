"""Registers ``llm-modules`` as an lm-evaluation-harness model, so that
``lm_eval --model llm-modules --model_args pretrained=PATH`` works once both packages are installed.

lm-eval 0.4.13 discovers no models from other packages (no entry points): ``get_model`` imports
``lm_eval.models``, which registers its built-in models as lazy ``"module:Class"`` placeholders, but
only while the registry is empty. So ours must be added right after ``lm_eval.models`` has run:
earlier, the registry would be non-empty, ``lm_eval.models`` would never be imported, and every
built-in model would disappear.

``llm_modules_lm_eval.pth`` (installed beside this module in site-packages by the wheel and by an
editable install, see setup.py) calls ``install()`` at interpreter start-up. That adds a finder to
``sys.meta_path`` that does nothing for any module but ``lm_eval.models``; for that one it lets the
normal finders find it and registers our placeholder once its code has run. Start-up cost: importing
this stdlib-only file (no torch, no lm_eval). The placeholder imports llm_modules only when a user asks
for ``--model llm-modules``. A failure here never breaks lm-eval: the registration is skipped.
"""

from __future__ import annotations

import sys

NAME = "llm-modules"
TARGET = "llm_modules.evaluation.lm_eval_model:LLMModulesLM"
_WATCHED = "lm_eval.models"


def register() -> None:
    """Add the ``llm-modules`` placeholder next to lm-eval's own models (importing ``lm_eval.models``
    first, so the built-in placeholders are there too)."""
    import lm_eval.models  # noqa: F401  (the built-in models; a no-op once imported)
    from lm_eval.api.registry import model_registry

    if NAME not in model_registry:
        model_registry.register(NAME, target=TARGET)


class _Loader:
    """The real loader of ``lm_eval.models``, registering ours after its code has run."""

    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        self._loader.exec_module(module)
        try:
            register()
        except Exception:  # never break lm-eval for its other models
            pass

    def __getattr__(self, name):
        return getattr(self._loader, name)


class _Finder:
    """On ``sys.meta_path``: finds nothing itself; wraps the loader of ``lm_eval.models``."""

    @classmethod
    def find_spec(cls, fullname, path=None, target=None):
        if fullname != _WATCHED:
            return None
        for finder in sys.meta_path:
            if finder is cls or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _Loader(spec.loader)
                return spec
        return None


def install() -> None:
    """Called by the .pth file at start-up (idempotent)."""
    if _WATCHED in sys.modules:  # installed late: lm_eval.models has already run
        try:
            register()
        except Exception:
            pass
    elif _Finder not in sys.meta_path:
        sys.meta_path.insert(0, _Finder)
