"""Markdown tables from `dni-agents bench rnn --out FILE` JSON (the numbers in docs/benchmarks.md): the
Table 1 shape (rows task × method, columns T) and the wall-clock study. Several files (e.g. `--only`
parts run side by side) make one table; a file run with overrides gets its own rows, its method named
with them (``dni [interface_defaults.utility.lr=0.0001]``).

    python scripts/rnn_table.py docs/results/rnn_copy.json docs/results/rnn_repeat_copy.json …
"""

from __future__ import annotations

import json
import sys

METHODS = ["bptt", "dni", "dni_aux"]
TASKS = {"copy": "Copy (longest length solved)", "repeat_copy": "Repeat Copy (longest n·r solved)",
         "charlm": "char-LM (test BPC)"}


def main(paths: list[str]) -> None:
    rows, methods = [], []
    for path in paths:
        with open(path) as f:
            report = json.load(f)
        suffix = f" [{' '.join(report['overrides'])}]" if report.get("overrides") else ""
        for r in report["results"]:
            rows.append({**r, "method": r["method"] + suffix})
            if r["study"] == "table1" and rows[-1]["method"] not in methods:
                methods.append(rows[-1]["method"])
    methods.sort(key=lambda m: (METHODS.index(m.split(" [")[0]), m))
    table = [r for r in rows if r["study"] == "table1"]
    Ts = sorted({r["T"] for r in table})
    if table:
        print("| task | method | " + " | ".join(f"T={t}" for t in Ts) + " |")
        print("|---|---|" + "---|" * len(Ts))
    for task, title in TASKS.items():
        for method in methods:
            cells = []
            for t in Ts:
                vs = [r["value"] for r in table if (r["task"], r["method"], r["T"]) == (task, method, t)]
                digits = 3 if task == "charlm" else 0
                cells.append(" / ".join(f"{v:.{digits}f}" for v in vs) if vs else "–")
            if any(c != "–" for c in cells):
                print(f"| {title} | {method} | " + " | ".join(cells) + " |")
    wall = [r for r in rows if r["study"] == "wallclock"]
    if wall:
        ref = next((r for r in wall if (r["method"], r["T"]) == ("bptt", 40)), None)
        goal = ref["value"] if ref else None
        print(f"\n| wall-clock study | best valid BPC | characters seen at best | train s at best | chars/s "
              f"| train s to reach {goal:.3f} (bptt T=40's best) |" if goal else "")
        print("|---|---|---|---|---|---|")
        for r in wall:
            best = min(r["curve"], key=lambda p: p["valid_bpc"])
            reach = [p["seconds"] for p in r["curve"] if goal is not None and p["valid_bpc"] <= goal]
            print(f"| {r['method']} T={r['T']} | {r['value']:.3f} | {best['chars']:,} | "
                  f"{best['seconds']:.0f} | {r['chars_per_s']:,.0f} | "
                  f"{f'{reach[0]:.0f}' if reach else 'not reached'} |")

if __name__ == "__main__":
    main(sys.argv[1:])
