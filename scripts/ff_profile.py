"""Where a training step's time goes: cProfile over 100 steps of one ff method on the timing shape
(784-256-256-10, batch 256, one thread), grouped as docs/benchmarks.md quotes it.

    python scripts/ff_profile.py dni [--batch-norm]
"""

from __future__ import annotations

import cProfile
import pstats
import sys

import torch

from dni_agents.drivers.ff.timing import step_function, timing_data


def main(args: list[str]) -> None:
    method = args[0] if args else "dni"
    torch.set_num_threads(1)
    step, _ = step_function(method, timing_data(0), 0, "--batch-norm" in args)
    for i in range(5):
        step(i)
    profile = cProfile.Profile()
    profile.enable()
    for i in range(5, 105):
        step(i)
    profile.disable()
    stats = pstats.Stats(profile).stats  # (file, line, name) -> (calls, primitive, tottime, cumtime, callers)
    total = sum(v[2] for v in stats.values())
    groups = {"backward calls": lambda k: k[2] == "<method 'run_backward' of 'torch._C._EngineBase' objects>",
              "optimizer steps": lambda k: (k[0].endswith("optimizer.py") and k[2] == "wrapper")
              or (k[0].endswith("core/optim.py") and k[2] == "step_together"),
              "linear products": lambda k: k[2] == "<built-in method torch._C._nn.linear>"}
    print(f"{method}: {1000 * total / 100:.2f} ms a step")
    for name, match in groups.items():
        keys = [k for k in stats if match(k)]
        # the optimizer's wrapper or the core's step_together: cumulative time (the Adam loop runs inside)
        seconds = sum(stats[k][3] if name == "optimizer steps" else stats[k][2] for k in keys)
        calls = sum(stats[k][0] for k in keys)
        print(f"  {name}: {calls // 100} a step, {100 * seconds / total:.0f}% of the step")


if __name__ == "__main__":
    main(sys.argv[1:])
