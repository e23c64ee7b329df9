"""Markdown table from `dni-agents bench marl --out FILE` JSON (the numbers in docs/benchmarks.md).
Several files (e.g. two `--only` halves run side by side) make one table.

    python scripts/marl_table.py docs/results/marl_a.json docs/results/marl_b.json
"""

from __future__ import annotations

import json
import sys

METHODS = ["none", "rial", "backprop", "dni", "cdni"]


def fmt(values: list[float | None], digits: int) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    mean = sum(values) / len(values)
    spread = f" ({min(values):.{digits}f} … {max(values):.{digits}f})" if len(values) > 1 else ""
    return f"{mean:.{digits}f}{spread}"


def main(paths: list[str]) -> None:
    rows, kinds, overrides = [], set(), set()
    for path in paths:
        with open(path) as f:
            report = json.load(f)
        rows += report["results"]
        kinds.add("quick" if report["quick"] else "full")
        overrides.add(" ".join(report["overrides"]) or "none")
    print(f"`{' + '.join(paths)}` ({', '.join(sorted(kinds))}; overrides {', '.join(sorted(overrides))})\n")
    print("| method | seeds | mean return per agent | success rate | message–goal MI (bits) "
          "| env steps/s | wall s |")
    print("|---|---|---|---|---|---|---|")
    for m in METHODS:
        rs = [r for r in rows if r["method"] == m]
        if not rs:
            continue
        print(f"| {m} | {len(rs)} | {fmt([r['mean_return'] for r in rs], 2)} | "
              f"{fmt([r['success_rate'] for r in rs], 2)} | {fmt([r['mi_bits'] for r in rs], 2)} | "
              f"{fmt([r['env_steps_per_s'] for r in rs], 0)} | {fmt([r['wall_s'] for r in rs], 0)} |")
    print()


if __name__ == "__main__":
    main(sys.argv[1:])
