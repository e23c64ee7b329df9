"""The bench itself: start each method's processes, evaluate their snapshots into accuracy-against-seconds
curves, summarize the ratios the docs quote, project the costs to more stages, plot."""

from __future__ import annotations

import dataclasses
import json
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from ...config import ConfigError
from ...data import ImageDataset, load_dataset
from ...launch import launch
from .setup import (
    METHODS,
    REFERENCES,
    SLOW_B,
    Setup,
    accuracy,
    apply_overrides,
    build_stages,
    default_setup,
)


def run_method(setup: Setup, method: str, procs: int, threads: int, steps: int, folder: Path,
               micro_batches: int | None = None, snapshots: bool = True, costs: bool = False) -> list[dict]:
    """Start ``procs`` fresh worker processes of ``method``; return what each rank wrote. The data set
    travels as ``data.pt`` beside ``folder`` (written once by :func:`save_data`)."""
    folder.mkdir(parents=True, exist_ok=True)
    spec = {"setup": {**dataclasses.asdict(setup), "micro_batches": list(setup.micro_batches)},
            "method": method, "threads": threads, "steps": steps, "folder": str(folder),
            "micro_batches": micro_batches, "snapshots": snapshots, "costs": costs,
            "data": str(folder.parent / "data.pt")}
    path = folder / "spec.json"
    path.write_text(json.dumps(spec))
    status = launch([sys.executable, "-m", "dni_agents.benches.parallel.worker", str(path)], procs,
                    grace=setup.timeout + 10)
    if status != 0:
        raise RuntimeError(f"bench parallel: method {method} failed (exit status {status}; see its stderr)")
    return [torch.load(folder / f"rank{r}.pt", weights_only=True) for r in range(procs)]


def save_data(data: ImageDataset, folder: Path) -> None:
    """The tensors the workers train on, so each loads them in a blink (no parsing, no scikit-learn)."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(dataclasses.asdict(data), folder / "data.pt")


def curve_of(setup: Setup, data: ImageDataset, ranks: list[dict]
             ) -> tuple[list[list[float]], float, list[int]]:
    """Test accuracy at each snapshot (on the first ``eval_samples`` test images) against the clock: a
    snapshot's time is the latest of the ranks' (when both stages had got there); the accuracy on the whole
    test set at the end; the samples trained on at each snapshot."""
    stages = build_stages(setup, data.input_dim, data.num_classes)
    for m in stages:
        m.eval()
    n = min(setup.eval_samples, len(data.x_test))
    curve, final, samples = [], 0.0, []
    points = zip(*(r["snapshots"] for r in ranks), strict=True)
    for k, parts in enumerate(points):
        samples.append(parts[0][0] * setup.batch_size)
        for _steps, _seconds, state in parts:
            for name, sd in state.items():
                stages[int(name.removeprefix("stage"))].load_state_dict(sd)
        seconds = max(p[1] for p in parts)
        curve.append([seconds, accuracy(stages, data.x_test[:n], data.y_test[:n])])
        if k == len(ranks[0]["snapshots"]) - 1:
            final = accuracy(stages, data.x_test, data.y_test)
    return curve, final, samples


def bench(
    quick: bool = False,
    out: Path | None = None,
    seeds: int | None = None,
    overrides: list[str] = (),
    only: list[str] | None = None,
) -> dict:
    """``dni-agents bench parallel``: the five methods (``only``: some of them) on the same samples, the
    in-process DNI references, the per-part costs and their projection to more stages. Writes JSON to
    ``out`` after every method, and a plot of accuracy against seconds beside it (``.png``)."""
    from ...runtime.report import write_report

    setup = apply_overrides(default_setup(quick), overrides)
    methods = list(METHODS)
    if only:
        known = (*METHODS, SLOW_B)
        unknown = [m for m in only if m not in known]
        if unknown:
            raise ConfigError(f"--only: {','.join(unknown)} is not a method (methods: {', '.join(known)})")
        methods = [m for m in METHODS if m in only]
    records: list[dict] = []
    report: dict = {"benchmark": "parallel", "quick": quick, "overrides": list(overrides),
                    "setup": dataclasses.asdict(setup), "records": records, "references": {}}
    if not only or SLOW_B in only:
        report[SLOW_B] = slow_b_study(quick, lambda: write_report(out, report))
        write_report(out, report)
    if not methods:
        return {SLOW_B: report[SLOW_B], "out": str(out) if out else None}
    data = load_dataset(setup.dataset)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # evaluation only, between runs: nothing else runs then
    with tempfile.TemporaryDirectory(prefix="dni-bench-parallel-") as tmp:
        try:
            for seed in range(seeds or 1):
                s = dataclasses.replace(setup, seed=setup.seed + seed)
                _bench_seed(s, data, methods, Path(tmp) / f"seed{seed}", report,
                            lambda: write_report(out, report))
        finally:
            torch.set_num_threads(threads)  # the caller's setting back
    report["summary"] = summarize(records, report["references"], setup.target_fraction)
    report["projection"] = project(report["costs"], window=setup.max_staleness,
                                   efficiency=report["summary"]["time_to_accuracy"]["sample_efficiency"])
    write_report(out, report)
    png = None
    if out is not None:
        png = Path(out).with_suffix(".png")
        plot(report, png)
    return {**report["summary"], "out": str(out) if out else None, "png": str(png) if png else None}


def slow_b_study(quick: bool, save: Callable[[], None] | None = None) -> dict:
    """The hierarchical system on 2 processes with a slow B (it sleeps 10 ms per tick): A's updates per
    second under ``backprop`` (A waits for B every block) against ``dni`` (A waits only when its staleness
    window of 1 block is full, or never: a window as long as the run). Ratios are dni over backprop."""
    from ...drivers.hier.dist import measure_slow_b

    blocks = 20 if quick else 60
    runs: list[dict] = []
    out = {"b_delay_s": 0.01, "blocks": blocks, "runs": runs}
    for mode, window in (("backprop", None), ("dni", 1), ("dni", None)):
        runs.append(measure_slow_b(mode, 0.01, blocks=blocks, max_staleness=window))
        if save is not None:
            save()
    bp = runs[0]
    out["ratios"] = [{"max_staleness": r["max_staleness"],
                      "updates_per_s": r["updates_per_s"] / bp["updates_per_s"],
                      "windows_per_s": r["windows_per_s"] / bp["windows_per_s"]} for r in runs[1:]]
    return out


def _bench_seed(setup: Setup, data: ImageDataset, methods: list[str], tmp: Path, report: dict,
                save: Callable[[], None]) -> None:
    steps = setup.steps
    save_data(data, tmp)
    if "backprop_1thread" not in methods:  # otherwise its worker measures them after training
        ranks = run_method(setup, "costs", 1, 1, steps, tmp / "costs")
        report.setdefault("costs", ranks[0]["result"]["costs"])

    def record(method: str, ranks: list[dict], **extra: object) -> dict:
        curve, final, at = curve_of(setup, data, ranks)
        wall = max(r["result"]["seconds"] for r in ranks)
        row = {"method": method, "samples_per_s": steps * setup.batch_size / wall, "accuracy": final,
               "wall_s": wall, "curve": curve, "curve_samples": at, "samples": steps * setup.batch_size,
               "steps": steps,
               "seed": setup.seed, "dataset": setup.dataset, **extra}
        print(f"bench parallel: {method:<22} {row['samples_per_s']:9.1f} samples/s  "
              f"accuracy {final:.4f}  ({wall:.1f} s)", file=sys.stderr, flush=True)
        return row

    for method in methods:
        if method.startswith("backprop"):
            threads = 2 if method == "backprop_2threads" else 1
            ranks = run_method(setup, method, 1, threads, steps, tmp / method, costs=threads == 1)
            row = record(method, ranks, procs=1, threads=threads)
            if threads == 1:
                report.setdefault("costs", ranks[0]["result"]["costs"])
        elif method == "pipelining":
            trials = {}
            for m in setup.micro_batches if len(setup.micro_batches) > 1 else ():
                ranks = run_method(setup, method, 2, 1, setup.pipe_trial_steps, tmp / f"trial{m}", m, False)
                wall = max(r["result"]["seconds"] for r in ranks)
                trials[str(m)] = setup.pipe_trial_steps * setup.batch_size / wall
            best = int(max(trials, key=trials.get)) if trials else setup.micro_batches[0]
            row = record(method, run_method(setup, method, 2, 1, steps, tmp / method, best),
                         procs=2, threads=1, micro_batches=best, schedule=setup.pipe_schedule,
                         trial_samples_per_s=trials)
        else:
            ranks = run_method(setup, method, 2, 1, steps, tmp / method)
            row = record(method, ranks, procs=2, threads=1, max_staleness=setup.max_staleness,
                         max_in_flight=ranks[0]["result"]["max_in_flight"],
                         utility_updates=ranks[0]["result"]["utility_updates"],
                         utility="linear" if method == "dni_full" else f"linear rank {setup.rank}")
            report["costs"].setdefault("comm", {"message_s": ranks[0]["result"]["comm_message_s"],
                                                "shape": [setup.batch_size, setup.width]})
            ref = REFERENCES[method]
            ref_row = record(ref, run_method(setup, ref, 1, 1, steps, tmp / ref), procs=1, threads=1)
            report["references"].setdefault(method, []).append(ref_row)
        report["records"].append(row)
        save()
    if "comm" not in report["costs"]:  # no DNI method ran: time a message on its own
        ranks = run_method(setup, "dni_full", 2, 1, 1, tmp / "comm", snapshots=False)
        report["costs"]["comm"] = {"message_s": ranks[0]["result"]["comm_message_s"],
                                   "shape": [setup.batch_size, setup.width]}


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def reached(curve: list[list[float]], target: float, column: int = 0) -> float | None:
    """The first curve point's ``column`` (0: seconds; or a list of samples alongside) at or above the
    target accuracy; None if the run never got there."""
    return next((point[column] for point in curve if point[1] >= target), None)


def time_to_accuracy(by: dict[str, list[dict]], fraction: float) -> dict:
    """The wall-clock seconds (and samples) each method needed to reach ``fraction`` of backprop_1thread's
    accuracy at the end of its run, both read off the curves (the same test images), at the first snapshot
    at or above it (so a time is known to one ``curve_points``-th of a run); the mean over seeds, None if a
    seed never reached it. ``sample_efficiency``: backprop's samples to the target over the method's (1:
    learns as fast per sample; the projection to more stages multiplies its speed-ups by it)."""
    base = by.get("backprop_1thread") or []
    if not base:
        return {"fraction": fraction, "target": None, "seconds": {}, "samples": {}, "sample_efficiency": {}}
    target = fraction * _mean([r["curve"][-1][1] for r in base])
    seconds, samples = {}, {}
    for m, rs in by.items():
        if not rs:  # not run
            continue
        times = [reached(r["curve"], target) for r in rs]
        counts = [reached([[n, c[1]] for n, c in zip(r.get("curve_samples", []), r["curve"], strict=False)],
                          target) for r in rs]
        seconds[m] = None if None in times else _mean(times)
        samples[m] = None if None in counts else _mean(counts)
    bp = samples.get("backprop_1thread")
    efficiency = {m: (bp / n if bp and n else None) for m, n in samples.items()}
    return {"fraction": fraction, "target": target, "seconds": seconds, "samples": samples,
            "sample_efficiency": efficiency}


def summarize(records: list[dict], references: dict[str, list[dict]], fraction: float = 0.95) -> dict:
    """Mean samples/s and accuracy per method (over seeds), the time each needed to reach ``fraction`` of
    backprop's accuracy, and the issues' acceptance ratios."""
    by = {m: [r for r in records if r["method"] == m] for m in METHODS}
    speed = {m: _mean([r["samples_per_s"] for r in rs]) for m, rs in by.items() if rs}
    acc = {m: _mean([r["accuracy"] for r in rs]) for m, rs in by.items() if rs}
    ref = {m: _mean([r["accuracy"] for r in rs]) for m, rs in references.items()}
    reach = time_to_accuracy(by, fraction)
    checks: dict[str, dict] = {}
    for m in ("dni_full", "dni_lowrank"):
        if m not in speed:
            continue
        c: dict = {}
        for base in ("backprop_1thread", "backprop_2threads", "pipelining"):
            if base in speed:
                c[f"speedup_vs_{base}"] = speed[m] / speed[base]
        if m in ref:
            c["accuracy_gap_vs_inprocess"] = acc[m] - ref[m]
        c["meets_1.6x_backprop_1thread"] = c.get("speedup_vs_backprop_1thread", 0) >= 1.6
        c["meets_pipelining"] = c.get("speedup_vs_pipelining", 0) >= 1.0
        c["meets_accuracy"] = abs(c.get("accuracy_gap_vs_inprocess", 1.0)) <= 0.01
        for base in ("backprop_2threads", "pipelining"):  # > 1: DNI got there first
            mine, theirs = reach["seconds"].get(m), reach["seconds"].get(base)
            c[f"time_to_accuracy_vs_{base}"] = theirs / mine if mine and theirs else None
        c["meets_time_to_accuracy"] = all((c[f"time_to_accuracy_vs_{b}"] or 0) > 1
                                          for b in ("backprop_2threads", "pipelining"))
        checks[m] = c
    return {"samples_per_s": speed, "accuracy": acc, "inprocess_dni_accuracy": ref,
            "time_to_accuracy": reach, "acceptance": checks}


# ------------------------------------------------------------------------------------------ projection
def project(costs: dict, stages: Sequence[int] = (2, 4, 8, 16), micro_batches: Sequence[int] | None = None,
            window: int = 1, efficiency: dict[str, float | None] | None = None) -> list[dict]:
    """Speed-up over one-process backprop (one thread) of K stages on K cores, from measured part costs.

    Assumptions (stated in docs/distributed.md): a model of K identical stages, each costing the mean of
    the two measured stages (forward f, backward b, Adam step o: s = f + b + o); one core per stage;
    communication not overlapped with compute, each stage paying one message time c per step (half of
    its two boundaries' message + target); a middle stage of DNI also runs the utility model (forward
    u_f, update u_u, and with a staleness ``window`` > 0 a second forward: a target then comes back after
    the model was updated, and the update regresses a fresh prediction). Then, per batch:

    * backprop, one process: K·s;
    * DNI: s + u_f·(2 if window else 1) + u_u + c (every stage busy every step: no bubble);
    * pipeline with M micro-batches: (M + K − 1)·(f_M + b_M + c/M) + o, where f_M, b_M are the measured
      stage costs at micro-batch size B/M: idle fraction (K − 1)/(M + K − 1).

    With ``efficiency`` (per method, backprop's samples to the target accuracy over the method's, measured
    on 2 stages by :func:`time_to_accuracy`), each speed-up is also given to that accuracy
    (``…_time_speedup`` = speed-up × efficiency), assuming a method needs the same share more samples at K
    stages as at 2 (for DNI, where each stage boundary adds staleness, an optimistic assumption).
    """
    parts = costs["stages"]
    mean = lambda key, src=parts: sum(p[key] for p in src) / len(src)  # noqa: E731
    f, b, o = mean("forward_s"), mean("backward_s"), mean("optimizer_s")
    s = f + b + o
    c = costs.get("comm", {}).get("message_s", 0.0)
    rows = []
    micro = list(micro_batches or parts[0]["micro"])
    for k in stages:
        row: dict = {"stages": k, "backprop_s": k * s}
        for name, u in costs["utility"].items():
            forwards = 2 if window > 0 else 1
            row[f"dni_{name}_speedup"] = k * s / (s + forwards * u["forward_s"] + u["update_s"] + c)
            if efficiency is not None:
                e = efficiency.get(f"dni_{name}")
                row[f"dni_{name}_time_speedup"] = row[f"dni_{name}_speedup"] * e if e else None
        best = None
        for m in micro:
            fm = mean("forward_s", [p["micro"][str(m)] for p in parts])
            bm = mean("backward_s", [p["micro"][str(m)] for p in parts])
            speedup = k * s / ((int(m) + k - 1) * (fm + bm + c / int(m)) + o)
            row[f"pipeline_m{m}_speedup"] = speedup
            best = speedup if best is None else max(best, speedup)
        row["pipeline_best_speedup"] = best
        if efficiency is not None:
            e = efficiency.get("pipelining")
            row["pipeline_best_time_speedup"] = best * e if e and best else None
        row["pipeline_idle_fraction"] = {str(m): (k - 1) / (int(m) + k - 1) for m in micro}
        rows.append(row)
    return rows


def plot(report: dict, path: Path) -> None:
    """Accuracy against wall-clock seconds, one line per method; the in-process DNI references dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in report["records"]:
        xs, ys = [p[0] for p in r["curve"]], [p[1] for p in r["curve"]]
        ax.plot(xs, ys, marker="o", ms=3, label=f"{r['method']} ({r['samples_per_s']:.0f}/s)")
    for method, rows in report["references"].items():
        for r in rows:
            ax.axhline(r["accuracy"], ls="--", lw=0.8, color="gray")
            ax.annotate(f"{method} in-process", (0, r["accuracy"]), fontsize=7, color="gray")
    target = report.get("summary", {}).get("time_to_accuracy", {}).get("target")
    if target:
        ax.axhline(target, ls=":", lw=0.8, color="black")
        ax.annotate(f"target ({report['setup'].get('target_fraction', 0.95):.0%} of backprop)", (0, target),
                    fontsize=7)
    setup = report["setup"]
    ax.set(xlabel="wall-clock seconds", ylabel=f"test accuracy ({setup['dataset']})",
           title=f"MLP width {setup['width']}, 2 stages, {setup['samples']} samples per method")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
