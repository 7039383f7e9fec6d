"""Plot a run's training and validation loss from its Lightning ``metrics.csv``.

    python scripts/plot_quickstart.py runs/llm/version_0/metrics.csv docs/assets/quickstart-loss.svg

The CSV is what Lightning's CSVLogger writes: one row per logging call, a ``step`` column and one
column per metric, with empty cells for the metrics a row does not carry. ``train/loss`` is drawn
as a line, ``val/loss`` as markers joined by a line (the step-0 point is the untrained model). The
output format follows the file suffix (.svg, .png, .pdf); matplotlib runs headless (Agg).
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path


def read_losses(path: str | Path) -> dict[str, list[tuple[int, float]]]:
    """``{"train/loss": [(step, value), ...], "val/loss": [...]}`` from a CSVLogger file, sorted by step."""
    series: dict[str, list[tuple[int, float]]] = {"train/loss": [], "val/loss": []}
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        missing = {"step", *series} - set(reader.fieldnames or ())
        if missing:
            raise SystemExit(f"{path}: no column {', '.join(sorted(missing))}; is this a Lightning metrics.csv?")
        for row in reader:
            for name, points in series.items():
                cell = (row.get(name) or "").strip()
                if cell and row.get("step", "").strip():
                    points.append((int(float(row["step"])), float(cell)))
    for points in series.values():
        points.sort()
    if not any(series.values()):
        raise SystemExit(f"{path}: no train/loss or val/loss values to plot")
    return series


def plot(series: dict[str, list[tuple[int, float]]], out: str | Path, title: str | None = None) -> Path:
    """Draw the losses and save to ``out`` (format from its suffix); return the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matplotlib.rcParams["svg.hashsalt"] = "llm-modules"  # stable element ids: the same CSV gives the same SVG

    fig, ax = plt.subplots(figsize=(7.0, 4.0), dpi=100)
    train, val = series["train/loss"], series["val/loss"]
    if train:
        ax.plot([s for s, _ in train], [v for _, v in train], color="#1f77b4", linewidth=1.6,
                label="train loss")
    if val:
        ax.plot([s for s, _ in val], [v for _, v in val], color="#d62728", linewidth=1.6, marker="o",
                markersize=5, label="validation loss")
        last_step, last = val[-1]
        ax.annotate(f"{last:.2f}", (last_step, last), textcoords="offset points", xytext=(0, 8),
                    ha="center", color="#d62728", fontsize=9)
        first_step, first = val[0]
        ax.annotate(f"{first:.2f}", (first_step, first), textcoords="offset points", xytext=(8, 0),
                    va="center", color="#d62728", fontsize=9)
    ax.set_xlabel("training step")
    ax.set_ylabel("cross-entropy (nats/token)")
    if title:
        ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(frameon=False)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"Date": None} if out.suffix.lower() == ".svg" else None  # no timestamp: reproducible SVG
    fig.savefig(out, metadata=metadata)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Plot train/val loss from a Lightning metrics.csv.")
    parser.add_argument("metrics", help="a run's metrics.csv (e.g. runs/llm/version_0/metrics.csv)")
    parser.add_argument("out", help="image to write: .svg, .png or .pdf")
    parser.add_argument("--title", default=None, help="a title above the plot")
    args = parser.parse_args(argv)
    series = read_losses(args.metrics)
    path = plot(series, args.out, title=args.title)
    print(f"wrote {path} ({len(series['train/loss'])} train, {len(series['val/loss'])} validation points)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
