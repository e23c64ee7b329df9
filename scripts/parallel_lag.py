"""What the staleness window costs in accuracy, without the processes: the bench's two-stage DNI system in
one process, with every target handed back DELAY steps late (the lag a window of DELAY adds), then the test
accuracy of the chain (docs/distributed.md, "Why cDNI, batch-norm and a window of 1").

    python scripts/parallel_lag.py DELAY [KEY=VALUE ...]      # e.g. 1 width=256 mode=dni batch_norm=false
"""

from __future__ import annotations

import sys

import torch

from dni_agents.benches.parallel.setup import Setup, accuracy, apply_overrides, build_dni_system, build_stages
from dni_agents.core import InProcess
from dni_agents.data import batches, load_dataset
from dni_agents.drivers.ff import train_step


class LateTargets(InProcess):
    """In-process hand-off, except that a target put at step ``now`` can be taken from ``now + delay``."""

    def __init__(self, delay: int) -> None:
        super().__init__()
        self.delay, self.now = delay, 0
        self.due: dict[tuple[str, int], int] = {}

    def put_target(self, interface: str, step: int, target: torch.Tensor) -> None:
        self.due[(interface, step)] = self.now + self.delay
        super().put_target(interface, step, target)

    def take_target(self, interface: str, step: int) -> torch.Tensor | None:
        if self.due.get((interface, step), 0) > self.now:
            return None
        self.due.pop((interface, step), None)
        return super().take_target(interface, step)


def run(delay: int, setup: Setup) -> float:
    data = load_dataset(setup.dataset)
    stages = build_stages(setup, data.input_dim, data.num_classes)
    system = build_dni_system(setup, stages, lowrank=False, classes=data.num_classes)
    transport = LateTargets(delay)
    for iface in system.interfaces.values():
        iface.transport = transport
    system.track_stats = False
    stream = batches(data.x_train, data.y_train, setup.batch_size, torch.Generator().manual_seed(setup.seed))
    for step in range(setup.steps):
        transport.now = step
        train_step(system, step, *next(stream), data.num_classes)
        system.drain_stats()
    for m in stages:
        m.eval()
    return accuracy(stages, data.x_test, data.y_test)


if __name__ == "__main__":
    torch.set_num_threads(1)
    setup = apply_overrides(Setup(), sys.argv[2:])
    print(f"delay {sys.argv[1]} {' '.join(sys.argv[2:])}: test accuracy {run(int(sys.argv[1]), setup):.4f}")
