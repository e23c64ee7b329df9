"""What benches share: one run without a run folder, timed; the JSON report (written atomically after every
run); means and ranges over seeds; plots against data and time."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..config import Config


def timed_run(train: Callable[..., dict], cfg: Config) -> tuple[dict, float]:
    """A bench's run: ``train(cfg)`` with no run folder, logging or bar; its result and wall seconds."""
    t0 = time.perf_counter()
    result = train(cfg, Path("runs") / cfg.name, log=False, progress=False)
    return result, time.perf_counter() - t0


class Report:
    """A bench's JSON report (``benchmark``, ``quick``, ``overrides``, ``results``, and what ``finish``
    adds), written to ``out`` after every record, so a long bench that is cut short keeps what it
    measured."""

    def __init__(self, benchmark: str, quick: bool, overrides: Iterable[str], out: Path | None) -> None:
        self.out = out
        self.results: list[dict] = []
        self.data: dict[str, Any] = {"benchmark": benchmark, "quick": quick, "overrides": list(overrides),
                                     "results": self.results}

    def add(self, record: dict, line: str) -> None:
        """Keep ``record``, print ``line`` (above any progress bar) and write the report."""
        self.results.append(record)
        tqdm.write(line)
        write_report(self.out, self.data)

    def finish(self, **extra: Any) -> None:
        """Add the summary entries and write the report a last time."""
        self.data.update(extra)
        write_report(self.out, self.data)


def mean_and_range(rows: list[dict], key: str) -> dict[str, float | None]:
    """``key``, ``key_min`` and ``key_max`` over the rows where it is not None (all None if none is)."""
    values = [r[key] for r in rows if r.get(key) is not None]
    if not values:
        return {key: None, f"{key}_min": None, f"{key}_max": None}
    return {key: sum(values) / len(values), f"{key}_min": min(values), f"{key}_max": max(values)}


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
