"""Markdown tables from `dni-agents bench ff --out FILE` JSON files (the numbers in docs/benchmarks.md).

    python scripts/ff_table.py docs/results/ff_quick.json docs/results/ff_full_mlp.json ...
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict

METHODS = ["backprop", "dni", "cdni", "unlock", "top-only"]


def main(paths: list[str]) -> None:
    rows: dict[tuple[str, str], dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    timing = []
    for path in paths:
        with open(path) as f:
            report = json.load(f)
        for r in report["results"]:
            if r["dataset"] == "timing":
                timing.append((path, r))
            else:
                rows[(r["dataset"], r["model"])][r["method"]].append(r)
    print("| dataset | model | " + " | ".join(METHODS) + " |")
    print("|---|---|" + "---|" * len(METHODS))
    for (dataset, model), by_method in rows.items():
        cells = []
        for m in METHODS:
            rs = by_method.get(m, [])
            if not rs:
                cells.append("–")
                continue
            acc = sum(r["test_accuracy"] for r in rs) / len(rs)
            cells.append(f"{100 * acc:.2f}" + (f" (n={len(rs)})" if len(rs) > 1 else ""))
        print(f"| {dataset} | {model} | " + " | ".join(cells) + " |")
    print()
    print("| source | dataset | model | " + " | ".join(f"{m} steps/s" for m in METHODS) + " |")
    print("|---|---|---|" + "---|" * len(METHODS))
    for (dataset, model), by_method in rows.items():
        cells = [f"{sum(r['steps_per_s'] for r in by_method[m]) / len(by_method[m]):.0f}"
                 if by_method.get(m) else "–" for m in METHODS]
        device = next(iter(by_method.values()))[0].get("device", "cpu")
        print(f"| {device} | {dataset} | {model} | " + " | ".join(cells) + " |")
    if timing:
        print()
        print("| file | method | batch-norm | Adam | steps/s | cost vs backprop | cost vs plain PyTorch "
              "| matmul FLOPs vs plain |")
        print("|---|---|---|---|---|---|---|---|")
        for path, r in timing:
            plain = f"{r['cost_vs_plain']:.3f}" if r.get("cost_vs_plain") is not None else "–"
            bn = {True: "yes", False: "no"}.get(r.get("batch_norm"), "yes")  # older files: always on
            adam = "fused" if r.get("fused") else "default"
            flops = f"{r['flops_vs_plain']:.3f}" if r.get("flops_vs_plain") is not None else "–"
            print(f"| {path} | {r['method']} | {bn} | {adam} | {r['steps_per_s']:.1f} | "
                  f"{r['cost_vs_backprop']:.3f} | {plain} | {flops} |")


if __name__ == "__main__":
    main(sys.argv[1:])
