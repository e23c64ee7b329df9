"""``dni-agents bench hier``: each mode of ``A -> B``, temporal channels off and on, several seeds."""

from __future__ import annotations

from pathlib import Path

from tqdm.auto import tqdm

from ...config import load_config
from ...runtime.report import Report, mean_and_range, plot_against_data_and_time, timed_run
from .model import METHODS, TEMPORAL
from .train import train


def bench(quick: bool = False, out: Path | None = None, seeds: int | None = None, overrides: list[str] = (),
          only: list[str] | None = None) -> dict:
    """``dni-agents bench hier``: B's and A's held-out accuracy for each mode on A -> B (temporal DNI off,
    and in the full run also on), the same block budget for all, several seeds; JSON records and a PNG of
    accuracy against blocks and seconds. Quick: the four modes and dni with temporal DNI on both agents.
``only`` keeps the methods it names (``dni``, ``dni+temporal``)."""
    seeds = seeds or (2 if quick else 3)
    steps = 2000 if quick else 4000
    runs = [(m, "off") for m in METHODS] + ([("dni", "on")] if quick else [(m, "on") for m in METHODS])
    report = Report("hier", quick, overrides, out)
    records = report.results
    bar = tqdm(total=len(runs) * seeds, desc="bench hier", unit="run", leave=False)
    for seed in range(seeds):
        for method, temporal in runs:
            label = method if temporal == "off" else f"{method}+temporal"
            if only and label not in only and method not in only:
                continue
            cfg = load_config("hier", [*METHODS[method], *TEMPORAL[temporal], f"trainer.steps={steps}",
                                       f"trainer.eval_every={steps // 10}", *overrides, f"seed={seed}",
                                       f"name=bench_{label.replace('+', '_')}"])
            res, wall = timed_run(train, cfg)
            report.add({
                "method": method, "temporal_dni": temporal == "on", "T": cfg.hier.period,
                "K": cfg.hier.memory, "seed": seed,
                "a_accuracy": res["a_accuracy"], "b_accuracy": res["b_accuracy"],
                "steps": steps,
                "digits": steps * cfg.hier.period * cfg.hier.b_truncation * cfg.trainer.batch_size,
                "wall_s": wall, "train_s": res["train_seconds"], "curve": res["curve"],
            }, f"{label:>18} seed {seed}: B {res['b_accuracy']:.3f}  A {res['a_accuracy']:.3f}  "
               f"({wall:.0f} s)")
            bar.update(1)
    bar.close()
    summary = summarize(records)
    report.finish(summary=summary)
    if out is not None:
        plot(records, Path(out).with_suffix(".png"))
    return {"summary": summary, "out": str(out) if out else None}


def summarize(records: list[dict]) -> list[dict]:
    """Mean and range over seeds, per method."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["method"], r["temporal_dni"]), []).append(r)
    rows = []
    for (method, temporal), rs in groups.items():
        row = {"method": method, "temporal_dni": temporal, "seeds": len(rs)}
        for key in ("b_accuracy", "a_accuracy", "wall_s"):
            row.update(mean_and_range(rs, key))
        rows.append(row)
    return rows


def _mean(records: list[dict], key: str, i: int) -> float:
    return sum(r["curve"][i][key] for r in records) / len(records)


def plot(records: list[dict], path: Path) -> None:
    """B's held-out accuracy against blocks and against training seconds (seed means of each point)."""
    groups: dict[str, list[dict]] = {}
    for r in records:
        groups.setdefault(r["method"] + ("+temporal" if r["temporal_dni"] else ""), []).append(r)
    lines = []
    for label, rs in groups.items():
        n = min(len(r["curve"]) for r in rs)
        lines.append((label, [rs[0]["curve"][i]["steps"] for i in range(n)],
                      [_mean(rs, "seconds", i) for i in range(n)],
                      [_mean(rs, "b_accuracy", i) for i in range(n)]))
    plot_against_data_and_time(path, lines, "blocks (B updates)", "B accuracy (held-out digits)")
