"""``dni-agents bench ff``: methods × models × seeds (accuracy), and the per-step timing rows."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ...config import Config, ConfigError, load_config, parse_config
from ...data import ImageDataset, batches
from ...runtime.report import Report, timed_run
from .model import METHODS, build_system
from .train import train, train_step


def method_config(base: str, method: str, overrides: list[str] = ()) -> Config:
    return load_config(base, [*METHODS[method], *overrides])


def time_methods(methods: list[str], steps: int, repeats: int = 3, seed: int = 0) -> list[dict]:
    """Seconds per training step of the paper's 3-layer FCN shape (784-256-256-10, batch 256, random
    inputs), methods interleaved ``repeats`` times so machine noise hits them alike; best of the repeats."""
    gen = torch.Generator().manual_seed(seed)
    data = ImageDataset(
        "timing", torch.randn(2048, 1, 28, 28, generator=gen), torch.randint(0, 10, (2048,), generator=gen),
        torch.randn(10, 1, 28, 28), torch.zeros(10, dtype=torch.long), 10,
    )
    best: dict[str, float] = {}
    for _ in range(repeats):
        for method in methods:
            cfg = parse_config(
                {"driver": "ff", "name": f"timing-{method}", "seed": seed,
                 "trainer": {"steps": steps, "batch_size": 256, "lr": 1e-4}, "ff": {"layers": 3}},
                METHODS[method],
            )
            system = build_system(cfg, data, torch.device("cpu"))
            system.track_stats = False
            stream = batches(data.x_train, data.y_train, 256, torch.Generator().manual_seed(seed))
            for step in range(5):  # warm-up
                train_step(system, step, *next(stream), 10)
            t0 = time.perf_counter()
            for step in range(5, 5 + steps):
                train_step(system, step, *next(stream), 10)
            per_step = (time.perf_counter() - t0) / steps
            best[method] = min(best.get(method, float("inf")), per_step)
    return [
        {"method": m, "dataset": "timing", "model": "mlp3-784-256-10", "test_accuracy": None,
         "steps_per_s": 1.0 / best[m], "steps": steps, "seed": seed, "batch_size": 256,
         "cost_vs_backprop": best[m] / best["backprop"] if "backprop" in best else None}
        for m in methods
    ]


def _model_name(cfg: Config) -> str:
    return f"{cfg.ff.model}{cfg.ff.layers}"


FULL_MODELS = [("mlp", 3), ("mlp", 4), ("mlp", 5), ("mlp", 6), ("cnn", 3)]


def bench(
    quick: bool = False,
    out: Path | None = None,
    seeds: int | None = None,
    overrides: list[str] = (),
    only: list[str] | None = None,
) -> dict:
    """``dni-agents bench ff``: every method on digits (quick, 3 seeds) or Fashion-MNIST MLPs of 3–6
    layers and a CNN (full, 1 seed), plus the cost of a DNI step against a backprop step (on the CPU).
    ``overrides`` apply to every run (``device=cuda``); ``only`` keeps the rows whose model (``mlp4``) or
    method (``cdni``) it names. Writes JSON to ``out``."""
    seeds = seeds or (3 if quick else 1)
    runs: list[tuple[str, list[str]]] = []
    if quick:
        runs = [("ff_digits", [])]
    else:
        runs = [(f"ff_fashion_{m}", [f"ff.layers={n}"]) for m, n in FULL_MODELS]
    report = Report("ff", quick, overrides, out)
    results = report.results

    jobs = [(b, extra, method, seed) for b, extra in runs for method in METHODS for seed in range(seeds)]
    if only:
        row = {base + str(extra): _model_name(load_config(base, extra)) for base, extra in runs}
        jobs = [j for j in jobs if j[2] in only or row[j[0] + str(j[1])] in only]
        if not jobs:
            raise ConfigError(
                f"--only: {','.join(only)} matches no row (models: {', '.join(row.values())}; "
                f"methods: {', '.join(METHODS)})"
            )
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
    results += time_methods(["backprop", "dni"], steps=100)
    timing = {r["method"]: r for r in results if r["dataset"] == "timing"}
    report.finish(dni_cost_vs_backprop=timing["dni"]["cost_vs_backprop"])
    summary = {}
    for r in results:
        if r["dataset"] != "timing":
            summary.setdefault(f"{r['model']}/{r['method']}", []).append(r["test_accuracy"])
    return {"test_accuracy": {k: sum(v) / len(v) for k, v in summary.items()},
            "dni_cost_vs_backprop": report.data["dni_cost_vs_backprop"], "out": str(out) if out else None}
