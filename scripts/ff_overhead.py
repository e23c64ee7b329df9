"""What the framework itself costs a feed-forward step, where the arithmetic is too small to hide it: our
``dni`` and ``backprop`` against their hand-written floors (``plain-dni``, ``plain-layers``: the same
parameters bit for bit, tests/test_ff.py) at a toy size (784-W-W-10, batch B; default W = B = 16) and at
the timing shape (W = B = 256), in alternating rounds, the median of the rounds' own ratios; the Python
function calls one step makes (cProfile); and what the non-finite check costs for one and two 0-d losses.
JSON to OUT.

    OMP_NUM_THREADS=1 python scripts/ff_overhead.py [--out OUT] [--rounds N]
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import statistics
import time
from pathlib import Path

import torch

from dni_agents.core.nonfinite import first_nonfinite
from dni_agents.drivers.ff.timing import interleaved_rounds, paired_cost, step_function, timing_data

PAIRS = (("dni", "plain-dni"), ("backprop", "plain-layers"))


def calls_per_step(step, start: int, steps: int = 50) -> float:
    profile = cProfile.Profile()
    profile.enable()
    for i in range(start, start + steps):
        step(i)
    profile.disable()
    return sum(v[1] for v in pstats.Stats(profile).stats.values()) / steps  # type: ignore[attr-defined]


def size(width: int, batch: int, rounds: int, steps: int) -> dict:
    data = timing_data(0)
    methods = [m for pair in PAIRS for m in pair]
    fns = {m: step_function(m, data, 0, batch_norm=False, hidden=width, batch_size=batch)[0] for m in methods}
    done = dict.fromkeys(methods, 0)
    interleaved_rounds(fns, 10, 1, done)  # warm-up
    seconds = interleaved_rounds(fns, steps, rounds, done)
    calls = {}
    for m, fn in fns.items():
        calls[m] = calls_per_step(fn, done[m])
        done[m] += 50
    row = {"width": width, "batch": batch, "rounds": rounds, "steps": steps,
           "us_per_step": {m: statistics.median(v) * 1e6 for m, v in seconds.items()},
           "python_calls_per_step": calls}
    for ours, floor in PAIRS:
        row[f"{ours}_vs_{floor}"] = paired_cost(seconds[ours], seconds[floor])
        row[f"{ours}_over_{floor}_us"] = statistics.median(
            (a - b) * 1e6 for a, b in zip(seconds[ours], seconds[floor], strict=True))
    return row


def check_cost(n: int = 5000) -> dict:
    loss = (torch.randn(3, requires_grad=True) * 2).sum()
    out = {}
    for name, tensors in (("one_loss", [loss]), ("two_scalars", [torch.tensor(1.0), torch.tensor(2.0)])):
        for _ in range(200):
            first_nonfinite(tensors)
        t0 = time.perf_counter()
        for _ in range(n):
            first_nonfinite(tensors)
        out[f"{name}_us"] = (time.perf_counter() - t0) / n * 1e6
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)
    report = {"script": "scripts/ff_overhead.py", "sizes": [size(16, 16, args.rounds, 50),
                                                            size(256, 256, args.rounds, 10)],
              "nonfinite_check": check_cost()}
    for r in report["sizes"]:
        print(f"W = B = {r['width']}: " + ", ".join(
            f"{ours} {r[f'{ours}_vs_{floor}']:.3f}x {floor} (+{r[f'{ours}_over_{floor}_us']:.0f} us)"
            for ours, floor in PAIRS) + "; Python calls a step: "
            + ", ".join(f"{m} {c:.0f}" for m, c in r["python_calls_per_step"].items()))
    print("non-finite check: " + ", ".join(f"{k} {v:.1f}" for k, v in report["nonfinite_check"].items()))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
