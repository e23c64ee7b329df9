"""Markdown tables from a `dni-agents bench parallel --out FILE` JSON file (the numbers in
docs/distributed.md): the measured methods, the acceptance ratios, the part costs, and the projection to
K stages computed from those costs by ``dni_agents.benches.parallel.project``.

    python scripts/parallel_table.py results/parallel.json [--stages 2 4 8 16]
"""

from __future__ import annotations

import argparse
import json

from dni_agents.benches.parallel import project, summarize


def ms(seconds: float) -> str:
    return f"{1000 * seconds:.2f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file")
    parser.add_argument("--stages", type=int, nargs="+", default=[2, 4, 8, 16])
    args = parser.parse_args(argv)
    with open(args.file) as f:
        report = json.load(f)
    setup = report["setup"]
    print(f"{setup['dataset']}, width {setup['width']}, {setup['hidden_layers']} hidden blocks "
          f"({setup['split']} on stage 0), batch {setup['batch_size']}, {setup['samples']} samples per "
          f"method, {setup.get('mode', 'dni')}\n")

    print("| method | procs × threads | samples/s | test accuracy (%) | wall s | notes |")
    print("|---|---|---|---|---|---|")
    for r in report["records"]:
        notes = []
        if "micro_batches" in r:
            trials = ", ".join(f"M={m}: {v:.0f}/s" for m, v in r.get("trial_samples_per_s", {}).items())
            trials = f" (trials {trials})" if trials else ""
            notes.append(f"{r['schedule']} M={r['micro_batches']}{trials}")
        if "max_staleness" in r:
            notes.append(f"staleness window {r['max_staleness']}, {r['utility']}")
        print(f"| {r['method']} | {r['procs']} × {r['threads']} | {r['samples_per_s']:.0f} | "
              f"{100 * r['accuracy']:.2f} | {r['wall_s']:.1f} | {'; '.join(notes)} |")
    for method, rows in report["references"].items():
        for r in rows:
            print(f"| {r['method']} (reference for {method}) | 1 × 1 | {r['samples_per_s']:.0f} | "
                  f"{100 * r['accuracy']:.2f} | {r['wall_s']:.1f} | |")

    summary = summarize(report["records"], report["references"], setup.get("target_fraction", 0.95))
    print("\n| DNI method | × backprop_1thread (≥ 1.6) | × pipelining (≥ 1) | × backprop_2threads | "
          "accuracy − in-process (|·| ≤ 1 pt) |")
    print("|---|---|---|---|---|")
    for method, c in summary["acceptance"].items():
        cells = [f"{c[k]:.2f}" if k in c else "–" for k in
                 ("speedup_vs_backprop_1thread", "speedup_vs_pipelining", "speedup_vs_backprop_2threads")]
        gap = c.get("accuracy_gap_vs_inprocess")
        print(f"| {method} | " + " | ".join(cells) + f" | {'–' if gap is None else f'{100 * gap:+.2f}'} |")

    reach = summary["time_to_accuracy"]
    if reach["target"] is not None:
        print(f"\nTime to {100 * reach['target']:.2f}% test accuracy (on the curves' test images; "
              f"{reach['fraction']:.0%} of backprop_1thread's at its end), first snapshot at or above it:\n")
        print("| method | seconds | samples | sample efficiency vs backprop | DNI got there first by |")
        print("|---|---|---|---|---|")
        for m, sec in reach["seconds"].items():
            n, e = reach["samples"].get(m), reach["sample_efficiency"].get(m)
            c = summary["acceptance"].get(m, {})
            first = ", ".join(f"{c[k]:.2f}× {k.removeprefix('time_to_accuracy_vs_')}" for k in
                              ("time_to_accuracy_vs_backprop_2threads", "time_to_accuracy_vs_pipelining")
                              if c.get(k) is not None)
            print(f"| {m} | {'not reached' if sec is None else f'{sec:.1f}'} | "
                  f"{'–' if n is None else f'{n:,.0f}'} | {'–' if e is None else f'{e:.2f}'} | {first} |")

    costs = report["costs"]
    print(f"\nPart costs, one thread, batch {costs['batch_size']} (ms):\n")
    print("| part | forward | backward | Adam step | params |")
    print("|---|---|---|---|---|")
    for i, s in enumerate(costs["stages"]):
        print(f"| stage {i} | {ms(s['forward_s'])} | {ms(s['backward_s'])} | {ms(s['optimizer_s'])} | "
              f"{s['params']:,} |")
        for m, p in s["micro"].items():
            print(f"| stage {i}, micro-batch B/{m} | {ms(p['forward_s'])} | {ms(p['backward_s'])} | | |")
    for name, u in costs["utility"].items():
        print(f"| utility model ({name}) | {ms(u['forward_s'])} | update {ms(u['update_s'])} | (in update) | "
              f"{u['params']:,} |")
    comm = costs.get("comm", {})
    if comm:
        print(f"| one message {tuple(comm['shape'])} between 2 processes | {ms(comm['message_s'])} | | | |")

    rows = project(costs, stages=args.stages, window=setup["max_staleness"],
                   efficiency=reach["sample_efficiency"])
    micro = list(rows[0]["pipeline_idle_fraction"])
    print("\nProjected speed-up over one process (backprop, one thread), K identical stages on K cores "
          "(per sample; to the target accuracy: × the sample efficiency measured on 2 stages):\n")
    print("| K | DNI full | DNI low-rank | " + " | ".join(f"pipeline M={m} (idle)" for m in micro)
          + " | to the target: DNI full | DNI low-rank | best pipeline |")
    print("|---|---|---|" + "---|" * len(micro) + "---|---|---|")
    fmt = lambda v: "–" if v is None else f"{v:.2f}"  # noqa: E731
    for r in rows:
        pipes = [f"{r[f'pipeline_m{m}_speedup']:.2f} ({r['pipeline_idle_fraction'][m]:.0%})" for m in micro]
        print(f"| {r['stages']} | {r['dni_full_speedup']:.2f} | {r['dni_lowrank_speedup']:.2f} | "
              + " | ".join(pipes) + f" | {fmt(r.get('dni_full_time_speedup'))} | "
              f"{fmt(r.get('dni_lowrank_time_speedup'))} | {fmt(r.get('pipeline_best_time_speedup'))} |")


if __name__ == "__main__":
    main()
