"""Plugins: an installed distribution's entry point adds a component that the CLI lists and configs use;
a broken plugin is reported by name without breaking the rest; local modules load via ``--plugins``
or a config's ``plugins:`` list.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
import torch
import yaml

import llm_modules.registry as registry
from llm_modules import CausalLM, ModelConfig
from llm_modules.cli import main
from llm_modules.registry import NORMS, ConfigError

GOOD_PLUGIN = '''
"""A throwaway llm-modules plugin: one norm."""
import torch
from torch import nn
from llm_modules.registry import NORMS


@NORMS.register("{name}")
class CenterNorm(nn.Module):
    """CenterNorm: subtract the mean, then a learned scale (a test plugin)."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return (x - x.mean(-1, keepdim=True)) * self.weight
'''


def distribution(root: Path, dist: str, module: str, entry: str, source: str) -> Path:
    """A minimal source tree whose pyproject declares ``module`` under the llm_modules.plugins group."""
    pkg = root / dist
    pkg.mkdir(parents=True)
    (pkg / "pyproject.toml").write_text(textwrap.dedent(f'''
        [build-system]
        requires = ["setuptools>=61"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "{dist}"
        version = "0.0.1"

        [project.entry-points."llm_modules.plugins"]
        {entry} = "{module}"

        [tool.setuptools]
        py-modules = ["{module}"]
    '''))
    (pkg / f"{module}.py").write_text(source)
    return pkg


def console_script() -> str:
    """The installed console script (the package is installed, so it must exist)."""
    script = Path(sys.executable).with_name("llm-modules")
    found = str(script) if script.exists() else shutil.which("llm-modules")
    assert found, "the llm-modules console script is not installed; pip install -e . first"
    return found


def test_installed_plugin_is_listed_and_usable_and_a_broken_one_is_reported(tmp_path):
    good = distribution(tmp_path, "mynorm-plugin", "mynorm_plugin", "mynorm", GOOD_PLUGIN.format(name="centernorm"))
    broken = distribution(tmp_path, "broken-plugin", "broken_plugin", "brokenplug",
                          'raise RuntimeError("this plugin is broken on purpose")\n')
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", "install", "--no-deps",
         "--no-build-isolation", "--target", str(site), str(good), str(broken)],
        check=True, capture_output=True, timeout=180,
    )
    env = {**os.environ, "PYTHONPATH": str(site)}

    listing = subprocess.run([console_script(), "registry", "--format", "json"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=120)
    assert listing.returncode == 0, listing.stderr
    norms = {e["name"]: e for e in json.loads(listing.stdout)["norm"]}
    assert norms["centernorm"]["provider"] == "mynorm_plugin"
    assert norms["centernorm"]["doc"].startswith("CenterNorm: subtract the mean")
    assert "rmsnorm" in norms  # the built-ins are still there
    assert "brokenplug" in listing.stderr and "broken on purpose" in listing.stderr
    assert listing.stderr.count("brokenplug") == 1, listing.stderr  # reported once, not once per handler
    assert "Traceback" not in listing.stderr

    use = (
        "import torch\n"
        "from llm_modules import CausalLM, ModelConfig\n"
        "cfg = ModelConfig.from_preset('gpt2-tiny', norm='centernorm')\n"
        "lm = CausalLM(cfg).eval()\n"
        "logits = lm(torch.randint(0, cfg.vocab_size, (2, 8)))\n"
        "assert logits.shape == (2, 8, cfg.vocab_size) and torch.isfinite(logits).all()\n"
        "print(sorted({type(m).__name__ for m in lm.modules() if 'Norm' in type(m).__name__}))\n"
    )
    built = subprocess.run([sys.executable, "-c", use], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=120)
    assert built.returncode == 0, built.stderr
    assert "CenterNorm" in built.stdout


@pytest.fixture
def local_plugin(tmp_path):
    """A plugin module file in tmp_path (not yet importable); removed from the registry afterwards."""
    suffix = uuid.uuid4().hex[:8]
    module, name = f"local_plugin_{suffix}", f"centernorm{suffix}"
    (tmp_path / f"{module}.py").write_text(GOOD_PLUGIN.format(name=name))
    yield module, name
    NORMS.unregister(name)
    registry._loaded_modules.discard(module)
    sys.modules.pop(module, None)


def test_plugins_flag_loads_a_module_from_the_working_directory(local_plugin, tmp_path, monkeypatch, capsys):
    module, name = local_plugin
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # the command may append the working directory
    assert main(["registry", "--format", "json", "--plugins", module]) == 0
    norms = {e["name"]: e for e in json.loads(capsys.readouterr().out)["norm"]}
    assert norms[name]["provider"] == module


def test_config_plugins_list_loads_a_module(local_plugin, tmp_path, monkeypatch):
    module, name = local_plugin
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match=f"unknown norm '{name}'"):
        CausalLM(ModelConfig.from_preset("gpt2-tiny", norm=name))
    path = tmp_path / "model.yaml"
    data = {**ModelConfig.from_preset("gpt2-tiny").to_dict(), "norm": name, "plugins": [module]}
    path.write_text(yaml.safe_dump(data))
    cfg = ModelConfig.from_file(path)
    assert cfg.plugins == [module] and cfg.norm == name
    lm = CausalLM(cfg).eval()
    with torch.no_grad():
        assert torch.isfinite(lm(torch.randint(0, cfg.vocab_size, (1, 6)))).all()
    assert any(type(m).__name__ == "CenterNorm" for m in lm.modules())


def test_a_config_plugins_list_is_found_in_the_working_directory_as_the_flag_is(local_plugin, tmp_path, monkeypatch):
    """One loader (registry.load_plugins) for --plugins, a config's plugins: list and entry points, so
    a local module named in a config resolves as it does on the command line."""
    module, name = local_plugin
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    cfg = ModelConfig.from_preset("gpt2-tiny", norm=name, plugins=[module])
    assert cfg.norm == name and str(tmp_path) in sys.path


# ---- the repository's example plugin (plugins/example, installed with the dev install) ---------------------

REPO = Path(__file__).resolve().parents[2]


def test_example_plugin_is_discovered_listed_and_usable_by_name(capsys):
    from importlib import metadata

    try:
        dist = metadata.distribution("llm-modules-example")
    except metadata.PackageNotFoundError:
        pytest.fail("plugins/example is not installed; pip install -e plugins/example -e plugins/flash_attn "
                    "-e plugins/xformers (README's test command does)", pytrace=False)
    assert [ep.value for ep in dist.entry_points if ep.group == registry.PLUGIN_GROUP] == ["llm_modules_example"]
    registry.load_plugins()
    assert "llm_modules_example" in registry._loaded_modules  # through the entry point, not an import here
    assert main(["registry", "--format", "json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    providers = {(slot, e["name"]): e["provider"] for slot, entries in listing.items() for e in entries}
    assert providers[("norm", "dyt")] == providers[("activation", "relu2")] == "llm_modules_example"
    cfg = ModelConfig.from_preset("gpt2-tiny", norm={"name": "dyt", "alpha": 0.8}, activation="relu2")
    lm = CausalLM(cfg).eval()
    with torch.no_grad():
        assert torch.isfinite(lm(torch.randint(0, cfg.vocab_size, (1, 6)))).all()
    assert {"DynamicTanh", "SquaredReLU"} <= {type(m).__name__ for m in lm.modules()}
    with pytest.raises(ConfigError, match=r"norm 'dyt' has no option 'eps'; its options: alpha, dim"):
        CausalLM(ModelConfig.from_preset("gpt2-tiny", norm={"name": "dyt", "eps": 1e-5}))
