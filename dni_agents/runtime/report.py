"""What benches write: JSON reports (atomically, after every run) and plots against data and time."""

from __future__ import annotations

import json
from pathlib import Path


def write_report(out: Path | None, report: dict) -> None:
    """Write a benchmark's JSON atomically; called after every run, so a long benchmark that is cut short
    keeps what it measured."""
    if out is None:
        return
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(out).with_name(Path(out).name + ".tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(out)


def plot_against_data_and_time(
    path: Path, lines: list[tuple[str, list[float], list[float], list[float]]], data_label: str, y_label: str,
) -> None:
    """Two panels, one curve per ``(label, data_x, seconds_x, y)``: the metric against how much data was
    seen and against training seconds (the two ways a method can be faster). PNG, headless."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for label, data_x, seconds_x, y in lines:
        axes[0].plot(data_x, y, label=label)
        axes[1].plot(seconds_x, y, label=label)
    axes[0].set_xlabel(data_label)
    axes[1].set_xlabel("training seconds")
    for ax in axes:
        ax.set_ylabel(y_label)
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
