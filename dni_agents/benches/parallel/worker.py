"""One process of a ``bench parallel`` method (``python -m dni_agents.benches.parallel.worker SPEC``): it
trains its stage by that method on the same batches as every other method, snapshots its parameters on a
clock that leaves the snapshots out, and times the per-part costs :func:`~.bench.project` needs."""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ...core import UtilityModel
from ...core.distributed import Route, TorchDistributed, init_process_group
from ...data import ImageDataset, batches
from .setup import Setup, build_dni_system, build_stages


class Clock:
    """Seconds since start, minus the time spent taking snapshots (which the methods do not need)."""

    def __init__(self) -> None:
        self.start, self.paused = time.perf_counter(), 0.0

    def now(self) -> float:
        return time.perf_counter() - self.start - self.paused


class Snapshots:
    """Copies of this process's stage parameters at evenly spaced steps, with their clock times."""

    def __init__(self, setup: Setup, steps: int, modules: dict[str, nn.Module], clock: Clock,
                 enabled: bool = True) -> None:
        points = max(1, setup.curve_points) if enabled else 0
        self.at = {round(steps * k / points) for k in range(points + 1)} if points else set()
        self.modules, self.clock, self.taken = modules, clock, []

    def __call__(self, steps_done: int) -> None:
        if steps_done not in self.at:
            return
        seconds, t0 = self.clock.now(), time.perf_counter()
        state = {name: {k: v.detach().clone() for k, v in m.state_dict().items()}
                 for name, m in self.modules.items()}
        self.taken.append((steps_done, seconds, state))
        self.clock.paused += time.perf_counter() - t0


def _run_backprop(setup: Setup, data: ImageDataset, steps: int, stream, snap_of) -> dict:
    stages = build_stages(setup, data.input_dim, data.num_classes)
    model = nn.Sequential(*stages)
    opt = torch.optim.Adam(model.parameters(), lr=setup.lr)
    clock = Clock()
    snap = snap_of({"stage0": stages[0], "stage1": stages[1]}, clock)
    snap(0)
    for step in range(steps):
        x, y = next(stream)
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
        snap(step + 1)
    return {"seconds": clock.now()}


def _run_dni_inprocess(setup: Setup, data: ImageDataset, steps: int, stream, snap_of, lowrank: bool) -> dict:
    from ...drivers.ff import train_step

    stages = build_stages(setup, data.input_dim, data.num_classes)
    system = build_dni_system(setup, stages, lowrank, data.num_classes)
    system.track_stats = False
    clock = Clock()
    snap = snap_of({"stage0": stages[0], "stage1": stages[1]}, clock)
    snap(0)
    for step in range(steps):
        train_step(system, step, *next(stream), data.num_classes)
        system.drain_stats()
        snap(step + 1)
    return {"seconds": clock.now()}


def measure_comm(rank: int, shape: tuple[int, ...], reps: int) -> float:
    """One-way seconds of one message of ``shape`` (float32) between ranks 0 and 1: half a ping-pong."""
    t = torch.randn(shape)
    times = []
    for i in range(reps + 3):
        t0 = time.perf_counter()
        if rank == 0:
            dist.send(t, 1)
            dist.recv(t, 1)
        else:
            dist.recv(t, 0)
            dist.send(t, 0)
        if i >= 3:
            times.append((time.perf_counter() - t0) / 2)
    return statistics.median(times)


def _run_dni_distributed(setup: Setup, data: ImageDataset, steps: int, stream, snap_of, rank: int,
                         lowrank: bool) -> dict:
    from ...drivers.ff import local_system, train_step_distributed

    comm = measure_comm(rank, (setup.batch_size, setup.width), setup.comm_reps)
    stages = build_stages(setup, data.input_dim, data.num_classes)
    full = build_dni_system(setup, stages, lowrank, data.num_classes)
    placement = {"stage0": 0, "stage1": 1}
    routes = [Route(i.name, i.sender, i.receiver) for i in full.interfaces.values()]
    transport = TorchDistributed(placement, routes, max_staleness=setup.max_staleness, timeout=setup.timeout)
    system = local_system(full, placement, rank, transport)
    system.track_stats = False
    chain = list(full.agents)
    dist.barrier()
    clock = Clock()
    snap = snap_of({f"stage{rank}": stages[rank]}, clock)
    snap(0)
    for step in range(steps):
        x, y = next(stream)
        train_step_distributed(system, transport, chain, step, x, y, data.num_classes)
        system.drain_stats()
        snap(step + 1)
    transport.throttle(steps + setup.max_staleness)  # every target back: the utility model has learned
    system.settle()
    seconds = clock.now()
    in_flight = transport.max_in_flight
    transport.close()
    updates = next(iter(full.interfaces.values())).utility_updates
    return {"seconds": seconds, "comm_message_s": comm, "max_in_flight": in_flight,
            "utility_updates": updates}


def _run_pipelining(setup: Setup, data: ImageDataset, steps: int, stream, snap_of, rank: int,
                    micro: int) -> dict:
    from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

    stages = build_stages(setup, data.input_dim, data.num_classes)
    module = stages[rank]
    stage = PipelineStage(module, rank, 2, torch.device("cpu"))
    kind = ScheduleGPipe if setup.pipe_schedule == "gpipe" else Schedule1F1B
    schedule = kind(stage, n_microbatches=micro, loss_fn=F.cross_entropy)
    opt = torch.optim.Adam(module.parameters(), lr=setup.lr)
    dist.barrier()
    clock = Clock()
    snap = snap_of({f"stage{rank}": module}, clock)
    snap(0)
    for step in range(steps):
        x, y = next(stream)
        opt.zero_grad(set_to_none=True)
        if rank == 0:
            schedule.step(x)
        else:
            schedule.step(target=y, losses=[])
        if step == 0:  # the first step infers shapes by a forward on an uninitialised tensor (NaNs on stage
            for m in module.modules():  # 1): forget the batch-norm statistics it polluted
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.reset_running_stats()
        opt.step()
        snap(step + 1)
    dist.barrier()
    return {"seconds": clock.now()}


def _time(fn: Callable[[], object], reps: int) -> float:
    for _ in range(2):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure_costs(setup: Setup, data: ImageDataset) -> dict:
    """Seconds of each part of a training step, one thread (medians of ``cost_reps``): per stage its forward,
    backward (parameter gradients, and the input gradient for stage 1, which replies it) and Adam step, at
    the whole batch and at each micro-batch size; per utility model its forward and its update (regression
    backward, parameter gradient only since the message is detached, plus Adam)."""
    stages = build_stages(setup, data.input_dim, data.num_classes)
    x, y = data.x_train[: setup.batch_size], data.y_train[: setup.batch_size]
    with torch.no_grad():
        h = stages[0](x)

    def stage_cost(i: int, rows: int) -> dict:
        inp = (x if i == 0 else h)[:rows]
        parts: dict[str, list[float]] = {"forward_s": [], "backward_s": []}
        for rep in range(setup.cost_reps + 2):
            z = inp if i == 0 else inp.detach().requires_grad_(True)
            t0 = time.perf_counter()
            out = stages[i](z)
            t1 = time.perf_counter()
            if i == 0:
                out.backward(torch.ones_like(out))
            else:
                F.cross_entropy(out, y[:rows]).backward()
            t2 = time.perf_counter()
            if rep >= 2:
                parts["forward_s"].append(t1 - t0)
                parts["backward_s"].append(t2 - t1)
        return {k: statistics.median(v) for k, v in parts.items()}

    out: dict = {"batch_size": setup.batch_size, "width": setup.width, "stages": []}
    for i, module in enumerate(stages):
        cost = stage_cost(i, setup.batch_size)
        opt = torch.optim.Adam(module.parameters(), lr=setup.lr)
        cost["optimizer_s"] = _time(opt.step, setup.cost_reps)
        cost["micro"] = {str(m): stage_cost(i, setup.batch_size // m) for m in setup.micro_batches}
        cost["params"] = sum(p.numel() for p in module.parameters())
        out["stages"].append(cost)
    out["utility"] = {}
    target = torch.randn_like(h)
    for name, rank in (("full", None), ("lowrank", setup.rank)):
        u = UtilityModel((setup.width,), rank=rank)
        nn.init.normal_(u.net[-1].weight, std=1e-3)
        opt = torch.optim.Adam(u.parameters(), lr=setup.utility_lr)

        def update(u: nn.Module = u, opt: torch.optim.Optimizer = opt) -> None:
            opt.zero_grad(set_to_none=True)
            F.mse_loss(u(h), target).backward()
            opt.step()

        forward = _time(lambda u=u: u(h), setup.cost_reps)
        out["utility"][name] = {"forward_s": forward, "update_s": _time(update, setup.cost_reps) - forward,
                                "params": sum(p.numel() for p in u.parameters())}
    return out


def worker(spec_path: str) -> None:
    """One process of one method (``python -m dni_agents.benches.parallel SPEC``): trains, writes
    ``rank{r}.pt`` (timings and snapshots) into the spec's folder."""
    spec = json.loads(Path(spec_path).read_text())
    setup = Setup(**{**spec["setup"], "micro_batches": tuple(spec["setup"]["micro_batches"])})
    torch.set_num_threads(spec["threads"])
    method, steps, folder = spec["method"], spec["steps"], Path(spec["folder"])
    procs = int(os.environ.get("WORLD_SIZE", "1"))
    rank = 0
    if procs > 1:
        rank, _ = init_process_group(backend="gloo", timeout=setup.timeout)
    data = ImageDataset(**torch.load(spec["data"], weights_only=True, mmap=True))
    stream = batches(data.x_train, data.y_train, setup.batch_size, torch.Generator().manual_seed(setup.seed))
    made: list[Snapshots] = []

    def snap_of(modules: dict[str, nn.Module], clock: Clock) -> Snapshots:
        made.append(Snapshots(setup, steps, modules, clock, enabled=spec["snapshots"]))
        return made[-1]

    if method == "costs":
        result = {"costs": measure_costs(setup, data)}
    elif method.startswith("backprop"):
        result = _run_backprop(setup, data, steps, stream, snap_of)
        if spec["costs"]:  # the same process, one thread too: saves a start-up
            result["costs"] = measure_costs(setup, data)
    elif method.endswith("_inprocess"):
        result = _run_dni_inprocess(setup, data, steps, stream, snap_of, "lowrank" in method)
    elif method.startswith("dni_"):
        result = _run_dni_distributed(setup, data, steps, stream, snap_of, rank, method == "dni_lowrank")
    elif method == "pipelining":
        result = _run_pipelining(setup, data, steps, stream, snap_of, rank, spec["micro_batches"])
    else:
        raise ValueError(f"unknown method {method!r}")
    snaps = made[0].taken if made else []
    torch.save({"result": result, "snapshots": snaps}, folder / f"rank{rank}.pt")
    if procs > 1:
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    worker(sys.argv[1])
