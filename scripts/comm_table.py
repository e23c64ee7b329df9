"""Merge `dni-agents bench comm` JSON files and print the tables docs/benchmarks.md quotes.

    python scripts/comm_table.py docs/results/comm_digits_a.json docs/results/comm_digits_b.json … [--png OUT]

Per task: one row per method (mean and range over seeds of the greedy return, the return with messages
shuffled across copies, the return with every channel silent (recorded since channel outages), heard MI,
held-out ĝ cosine and R², training env steps/s), for a competitive game (`marl.teams`) each team's
return, then the summary's fractions (`dni_agents.benches.comm.summarize`).
"""

from __future__ import annotations

import json
import sys

from dni_agents.benches.comm import plot, summarize


def fmt(values: list[float], digits: int = 3) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    mean = sum(values) / len(values)
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ({min(values):.{digits}f} … {max(values):.{digits}f})"


def main(args: list[str]) -> None:
    png = args[args.index("--png") + 1] if "--png" in args else None
    paths = [a for i, a in enumerate(args) if a != "--png" and (i == 0 or args[i - 1] != "--png")]
    results = [r for p in paths for r in json.loads(open(p).read())["results"]]
    if png:
        plot(results, png)
    summary = summarize(results)
    for task, s in summary.items():
        print(f"\n### {task}\n")
        print("| method | seeds | greedy return | ablated (permuted) | silenced | heard MI (bits) | ĝ cosine "
              "| ĝ R² | env steps/s |")
        print("|---|---|---|---|---|---|---|---|---|")
        for method in s["methods"]:
            rows = [r for r in results if r["task"] == task and r["method"] == method]
            print(f"| {method} | {len(rows)} | {fmt([r['mean_return'] for r in rows])} "
                  f"| {fmt([r['ablated_return'] for r in rows])} "
                  f"| {fmt([r.get('silenced_return') for r in rows])} "
                  f"| {fmt([r['mi_bits'] for r in rows], 2)} "
                  f"| {fmt([r['grad_cosine'] for r in rows], 2)} | {fmt([r['grad_r2'] for r in rows], 2)} "
                  f"| {fmt([r['env_steps_per_s'] for r in rows], 0)} |")
        mine = [r for r in results if r["task"] == task]
        teams = list(dict.fromkeys(t for r in mine for t in r.get("team_returns") or {}))
        if teams:  # a competitive game (marl.teams): each side's return, never the average of opposing sides
            print("\n| method | team | greedy return | ablated (permuted) | silenced |")
            print("|---|---|---|---|---|")
            for method in s["methods"]:
                rows = [r for r in results if r["task"] == task and r["method"] == method]
                for team in teams:
                    cols = [fmt([(r.get(key) or {}).get(team) for r in rows])
                            for key in ("team_returns", "ablated_team_returns", "silenced_team_returns")]
                    print(f"| {method} | {team} | " + " | ".join(cols) + " |")
        print()
        for key, value in s.items():
            if key != "methods":
                print(f"- {key}: {value:.3f}" if isinstance(value, float) else f"- {key}: {value}")


if __name__ == "__main__":
    main(sys.argv[1:])
