"""What DNI costs as a layer of your own model (``dni_agents.DNI`` in ``forward``, your loop unchanged),
against the core's own feed-forward loop (``dni-agents bench ff``'s timing rows: agents, ticks,
``steps_together``) and plain PyTorch, on the 784-256-256-10 MLP (no batch-norm, batch 256, random
inputs), for ``dni`` and ``cdni`` at both interfaces, and ``mode="backprop"`` (the control) against plain.

Per-step process CPU time on one thread, the methods in turn within each round (machine noise hits them
alike). Each cost is the median over rounds of the ratio of two methods' times in the same round. The
layer path makes the core loop's updates bit for bit (tests/test_dni_module.py), so only time differs.
JSON to OUT.

    python scripts/dni_module_cost.py --cpu 0 [--out OUT] [--rounds N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from dni_agents import DNI
from dni_agents.cli import pin_to_core
from dni_agents.data import ImageDataset, batches
from dni_agents.drivers.ff.timing import PLAIN, paired_cost, step_function, timing_data

BATCH, HIDDEN, LR = 256, 256, 1e-4  # the core's timing rows' shape and learning rate


class MLP(nn.Module):
    """The user's own model: three linear layers, a DNI after each hidden one."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.l1, self.l2, self.l3 = nn.Linear(784, HIDDEN), nn.Linear(HIDDEN, HIDDEN), nn.Linear(HIDDEN, 10)
        context = 10 if mode == "cdni" else 0
        self.dni12 = DNI(HIDDEN, context_dim=context, mode=mode)
        self.dni23 = DNI(HIDDEN, context_dim=context, mode=mode)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        label = F.one_hot(y, 10).float()
        h = self.dni12(torch.relu(self.l1(x)), context=label)
        h = self.dni23(torch.relu(self.l2(h)), context=label)
        return self.l3(h)


def layer_step(mode: str, data: ImageDataset, seed: int) -> Callable[[int], None]:
    """One step of the user's loop as the README has it: one Adam; ``zero_grad``, ``backward``, ``step``."""
    torch.manual_seed(seed)
    model = MLP(mode)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    stream = batches(data.x_train.flatten(1), data.y_train, BATCH, torch.Generator().manual_seed(seed))

    def step(_: int) -> None:
        x, y = next(stream)
        loss = F.cross_entropy(model(x, y), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step


def rounds_of(fns: dict[str, Callable[[int], None]], steps: int, rounds: int) -> dict[str, list[float]]:
    """Process CPU seconds per step of each function, ``rounds`` rounds of ``steps`` steps, in turn."""
    done = dict.fromkeys(fns, 0)
    out: dict[str, list[float]] = {m: [] for m in fns}
    for r in range(rounds + 1):  # round 0 warms up
        for m, fn in fns.items():
            t0 = time.process_time()
            for _ in range(steps):
                fn(done[m])
                done[m] += 1
            if r:
                out[m].append((time.process_time() - t0) / steps)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cpu", type=int, default=None, metavar="N", help="run on CPU core N alone")
    args = parser.parse_args()
    if args.cpu is not None:
        pin_to_core(args.cpu)
    torch.set_num_threads(1)
    data = timing_data(args.seed)
    fns = {"plain": step_function(PLAIN, data, args.seed, batch_norm=False)[0]}
    for mode in ("dni", "cdni"):
        fns[f"core-{mode}"] = step_function(mode, data, args.seed, batch_norm=False)[0]
        fns[f"layer-{mode}"] = layer_step(mode, data, args.seed)
    fns["layer-backprop"] = layer_step("backprop", data, args.seed)
    seconds = rounds_of(fns, args.steps, args.rounds)
    report = {
        "script": "scripts/dni_module_cost.py", "torch": torch.__version__, "threads": 1,
        "clock": "process CPU time", "model": "mlp 784-256-256-10, no batch-norm", "batch_size": BATCH,
        "rounds": args.rounds, "steps_per_round": args.steps, "seed": args.seed,
        "us_per_step": {m: statistics.median(v) * 1e6 for m, v in seconds.items()},
        "cost_vs_plain": {m: paired_cost(v, seconds["plain"]) for m, v in seconds.items()},
        "layer_vs_core": {mode: paired_cost(seconds[f"layer-{mode}"], seconds[f"core-{mode}"])
                          for mode in ("dni", "cdni")},
        "target_layer_vs_core": 1.10,
    }
    print("us per step: " + ", ".join(f"{m} {v:.0f}" for m, v in report["us_per_step"].items()))
    print("cost vs plain: " + ", ".join(f"{m} {v:.3f}" for m, v in report["cost_vs_plain"].items()))
    print("layer vs core: " + ", ".join(f"{m} {v:.3f}" for m, v in report["layer_vs_core"].items()))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
