"""``dni-agents bench ff``: methods × models × seeds (accuracy), and the per-step timing rows."""

from __future__ import annotations

from pathlib import Path

from tqdm.auto import tqdm

from ...config import Config, ConfigError, load_config
from ...runtime.report import Report, timed_run
from .model import METHODS
from .timing import PLAIN, PLAIN_LAYERS, time_methods
from .train import train


def method_config(base: str, method: str, overrides: list[str] = ()) -> Config:
    return load_config(base, [*METHODS[method], *overrides])


def _model_name(cfg: Config) -> str:
    return f"{cfg.ff.model}{cfg.ff.layers}"


FULL_MODELS = [("mlp", 3), ("mlp", 4), ("mlp", 5), ("mlp", 6), ("cnn", 3)]


def _by_setting(results: list[dict]) -> list[tuple[str, dict[str, float]]]:
    """The timing rows' cost against plain PyTorch, per setting (``bn``, ``no_bn_fused``, …) and method."""
    out: dict[str, dict[str, float]] = {}
    for r in results:
        if r["dataset"] == "timing":
            bn = ("bn" if r["batch_norm"] else "no_bn") + ("_fused" if r.get("fused") else "")
            out.setdefault(bn, {})[r["method"]] = r["cost_vs_plain"]
    return list(out.items())


def bench(
    quick: bool = False,
    out: Path | None = None,
    seeds: int | None = None,
    overrides: list[str] = (),
    only: list[str] | None = None,
) -> dict:
    """``dni-agents bench ff``: every method on digits (quick, 3 seeds) or Fashion-MNIST MLPs of 3–6
    layers and a CNN (full, 1 seed), plus the cost of a step of each method against plain PyTorch, with and
    without batch-norm (on the CPU, one thread: :mod:`.timing`). ``overrides`` apply to every run
    (``device=cuda``); ``only`` keeps the rows whose model (``mlp4``) or method (``cdni``) it names, and
    ``timing`` the timing rows (``--only timing``: those alone). Writes JSON to ``out``."""
    seeds = seeds or (3 if quick else 1)
    runs: list[tuple[str, list[str]]] = []
    if quick:
        runs = [("ff_digits", [])]
    else:
        runs = [(f"ff_fashion_{m}", [f"ff.layers={n}"]) for m, n in FULL_MODELS]
    report = Report("ff", quick, overrides, out)
    results = report.results

    jobs = [(b, extra, method, seed) for b, extra in runs for method in METHODS for seed in range(seeds)]
    timing = not only or "timing" in only
    if only and set(only) != {"timing"}:
        row = {base + str(extra): _model_name(load_config(base, extra)) for base, extra in runs}
        jobs = [j for j in jobs if j[2] in only or row[j[0] + str(j[1])] in only]
        if not jobs:
            raise ConfigError(
                f"--only: {','.join(only)} matches no row (models: {', '.join(row.values())}; "
                f"methods: {', '.join(METHODS)}; or timing)"
            )
    elif only:
        jobs = []
    for base, extra, method, seed in tqdm(jobs, desc="bench ff", unit="run"):
        cfg = method_config(base, method, [*extra, *overrides, f"seed={seed}"])
        metrics, _ = timed_run(train, cfg)
        report.add(
            {"method": method, "dataset": cfg.ff.dataset, "model": _model_name(cfg),
             "test_accuracy": metrics["test_accuracy"], "steps_per_s": metrics["steps_per_s"],
             "steps": metrics["steps"], "seed": seed, "device": cfg.device},
            f"{_model_name(cfg):>6} {method:>9} seed {seed}: "
            f"test accuracy {metrics['test_accuracy']:.4f}, {metrics['steps_per_s']:.0f} steps/s",
        )
    costs: dict[str, float] = {}
    flops: dict[str, float] = {}  # the arithmetic: matrix-product FLOPs of a step against plain PyTorch's
    if timing:  # plain PyTorch, its per-layer-Adam and hand-written-DNI floors, ours; default and fused Adam
        for fused, batch_norm in ((False, True), (False, False), (True, True), (True, False)):
            rows = time_methods([PLAIN, PLAIN_LAYERS, "backprop", "plain-dni", "dni", "plain-cdni", "cdni"],
                                steps=10, repeats=30, batch_norm=batch_norm, fused=fused)
            results += rows
            bn = ("bn" if batch_norm else "no_bn") + ("_fused" if fused else "")
            costs.update({f"{r['method']}_{bn}": r["cost_vs_plain"] for r in rows})
            flops.update({f"{r['method']}_{bn}": r["flops_vs_plain"] for r in rows})
            tqdm.write(f"timing ({bn}): " + ", ".join(
                f"{r['method']} {r['steps_per_s']:.0f} steps/s ({r['cost_vs_plain']:.2f}x plain, "
                f"FLOPs {r['flops_vs_plain']:.3f}x)"
                for r in rows))
    report.finish(cost_vs_plain=costs, flops_vs_plain=flops,
                  dni_cost_vs_backprop=next((r["cost_vs_backprop"] for r in results
                                             if r["dataset"] == "timing" and r["method"] == "dni"), None),
                  dni_cost_vs_floor={f"{m}_{bn}": by[m] / by[f"plain-{m}"] for bn, by in _by_setting(results)
                                     for m in ("dni", "cdni")})
    summary = {}
    for r in results:
        if r["dataset"] != "timing":
            summary.setdefault(f"{r['model']}/{r['method']}", []).append(r["test_accuracy"])
    return {"test_accuracy": {k: sum(v) / len(v) for k, v in summary.items()},
            "cost_vs_plain": costs, "out": str(out) if out else None}
