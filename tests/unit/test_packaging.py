"""The wheel ships every package: pyproject's hand-kept ``packages`` list once fell behind the folders
(estimate, data.prepare, training.pipeline and evaluation were missing from non-editable installs)."""

from __future__ import annotations

from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[2]


def test_every_package_folder_is_listed_in_pyproject():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    folders = {".".join(init.parent.relative_to(ROOT).parts) for init in (ROOT / "llm_modules").rglob("__init__.py")}
    assert folders - listed == set(), "add these to [tool.setuptools] packages in pyproject.toml"
    assert listed - folders <= {"llm_modules.configs"} | {p for p in listed if p.startswith("llm_modules.configs.")}
