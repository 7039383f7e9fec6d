"""scripts/plot_quickstart.py: a Lightning CSVLogger metrics.csv in, a loss-curve picture out."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import matplotlib  # noqa: E402,F401  (a dev dependency; the script under test needs it)

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "plot_quickstart.py"

# CSVLogger's shape: one row per logging call, empty cells for the metrics a row does not carry.
METRICS = """epoch,step,train/loss,train/lr,val/bits_per_byte,val/loss
,0,,,4.0,7.6
0,9,6.9,0.0004,,
0,19,6.0,0.0008,,
0,29,5.5,0.0012,,
0,29,,,3.1,5.8
0,39,5.1,0.0016,,
0,49,4.8,0.0020,,
0,49,,,2.9,4.9
"""


def run_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.parametrize("suffix", [".svg", ".png"])
def test_writes_a_loss_picture(tmp_path, suffix):
    metrics = tmp_path / "metrics.csv"
    metrics.write_text(METRICS)
    out = tmp_path / "plots" / f"loss{suffix}"
    result = run_script(str(metrics), str(out))
    assert result.returncode == 0, result.stderr
    assert "5 train, 3 validation points" in result.stdout
    assert out.is_file() and out.stat().st_size > 5_000
    head = out.read_bytes()[:200]
    assert (b"<svg" in out.read_bytes()) if suffix == ".svg" else head.startswith(b"\x89PNG")


def test_same_csv_gives_the_same_svg(tmp_path):
    metrics = tmp_path / "metrics.csv"
    metrics.write_text(METRICS)
    run_script(str(metrics), str(tmp_path / "a.svg"))
    run_script(str(metrics), str(tmp_path / "b.svg"))
    assert (tmp_path / "a.svg").read_bytes() == (tmp_path / "b.svg").read_bytes()


def test_refuses_a_csv_without_the_loss_columns(tmp_path):
    metrics = tmp_path / "metrics.csv"
    metrics.write_text("epoch,step,acc\n0,1,0.5\n")
    result = run_script(str(metrics), str(tmp_path / "loss.svg"))
    assert result.returncode != 0
    assert "train/loss" in result.stderr and "val/loss" in result.stderr
    assert not (tmp_path / "loss.svg").exists()
