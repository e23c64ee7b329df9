"""``dni-agents bench parallel``: does decoupling buy wall-clock speed when stages run in parallel?

One wide MLP (784 → W → … → W → 10, batch-norm, ReLU), cut into two stages, trained on real data by
five methods, side by side, each on the same number of samples (the same batches in the same order), each
process on one core unless said otherwise:

=====================  ===============================================================================
``backprop_2threads``  one process, plain backprop, ``torch.set_num_threads(2)``: what two cores give
                       without any parallel training scheme
``backprop_1thread``   one process, plain backprop, one thread: the reference for speed-ups
``pipelining``         ``torch.distributed.pipelining`` (a ``PipelineStage`` per process, GPipe or 1F1B)
                       over two processes; every micro-batch count of ``micro_batches`` is timed on a
                       short trial and the fastest trains
``dni_full``           DNI over two processes: the ff driver's distributed step on our
                       ``TorchDistributed`` transport, a same-width linear utility model at the cut
                       (conditioned on the label, cDNI, unless ``mode=dni``)
``dni_lowrank``        the same with a rank-``rank`` linear utility model
=====================  ===============================================================================

Every method runs in fresh processes (``launch``), so none inherits another's allocator or thread pool.
Each worker snapshots its stage's parameters at ``curve_points`` evenly spaced steps (the copy's time is
taken off its clock); after training, this process evaluates every snapshot on the test set, so the curve
of accuracy against wall-clock seconds costs the timed loop nothing and is measured alike for all. The
in-process DNI runs (same model, same utility models, one process) give the accuracy the distributed runs
must match. A cost worker times each stage's forward, backward and optimizer step (whole batch and
micro-batches), the utility models' forward and update, and the one-way time of a message between two
processes: :func:`project` turns those into the speed-ups K = 2, 4, 8, 16 stages would give.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
import yaml
from torch import nn

from ..config import ConfigError
from ..core import Agent, Interface, System, UtilityModel
from ..core.distributed import Route, TorchDistributed, init_process_group
from ..data import FASHION_MNIST_DIR, ImageDataset, batches, load_dataset
from ..launch import launch

METHODS = ("backprop_2threads", "backprop_1thread", "pipelining", "dni_full", "dni_lowrank")
REFERENCES = {"dni_full": "dni_full_inprocess", "dni_lowrank": "dni_lowrank_inprocess"}
MAY_BE_ZERO = ("seed", "max_staleness")
SLOW_B = "hier_slow_b"  # --only name of the slow-B study
RECORD_KEYS = ("method", "samples_per_s", "accuracy", "wall_s", "curve")


@dataclass(frozen=True)
class Setup:
    """Everything the workers need (it travels to them as JSON). ``split``: hidden blocks on stage 0."""

    dataset: str = "fashion_mnist"
    width: int = 1024
    hidden_layers: int = 6  # Linear(+BN)+ReLU blocks, the first from the image; a Linear to the classes ends
    split: int = 3
    batch_size: int = 256
    samples: int = 120_000  # per method: 2 epochs of Fashion-MNIST
    batch_norm: bool = True  # BatchNorm1d after every hidden Linear (as the paper's FCNs)
    mode: str = "cdni"  # the utility model also sees the one-hot label; dni: the message only
    lr: float = 1e-4
    utility_lr: float = 1e-4
    rank: int = 128  # of the low-rank utility model (32 lost 1.6 points to its in-process run at window 1)
    max_staleness: int = 1  # enough to overlap two balanced stages; each step more costs accuracy
    micro_batches: tuple[int, ...] = (2, 4, 8)
    pipe_schedule: str = "gpipe"  # or 1f1b
    pipe_trial_steps: int = 20
    curve_points: int = 8
    eval_samples: int = 2000  # test samples per curve point (the final accuracy uses the whole test set)
    cost_reps: int = 10
    comm_reps: int = 20
    seed: int = 0
    timeout: float = 120.0

    @property
    def steps(self) -> int:
        return max(1, self.samples // self.batch_size)


QUICK = Setup(dataset="digits", width=256, hidden_layers=4, split=2, batch_size=64, samples=64 * 300,
              lr=1e-3, utility_lr=3e-4, rank=16, micro_batches=(2, 4), pipe_trial_steps=10, curve_points=5,
              eval_samples=360, cost_reps=5, comm_reps=10, timeout=60.0)


def default_setup(quick: bool) -> Setup:
    """Quick: digits, narrow. Full: Fashion-MNIST when the Debian package is installed, else digits."""
    if quick:
        return QUICK
    return Setup(dataset="fashion_mnist" if FASHION_MNIST_DIR.is_dir() else "digits")


def apply_overrides(setup: Setup, overrides: Sequence[str]) -> Setup:
    """``width=512 micro_batches=[2,4]``: KEY=VALUE on the setup's fields, values parsed as YAML."""
    fields = {f.name: f for f in dataclasses.fields(Setup)}
    changes: dict = {}
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or key not in fields:
            raise ConfigError(f"bench parallel: unknown setting {key!r} (allowed: {', '.join(fields)})")
        value, default = yaml.safe_load(text), getattr(setup, key)
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, tuple):
            value = tuple(value) if isinstance(value, list) else (value,)
            ok = all(isinstance(v, int) and v > 0 for v in value)
        elif isinstance(default, float):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
            value = float(value) if ok else value
        elif isinstance(default, int):
            ok = isinstance(value, int) and not isinstance(value, bool) and (value > 0 or key in MAY_BE_ZERO)
        else:
            ok = isinstance(value, str)
        if not ok:
            raise ConfigError(f"bench parallel: {key}={text!r} is not a valid {type(default).__name__}")
        changes[key] = value
    setup = dataclasses.replace(setup, **changes)
    if not 1 <= setup.split <= setup.hidden_layers:
        raise ConfigError(f"bench parallel: split must be in 1..hidden_layers={setup.hidden_layers}")
    if setup.mode not in ("dni", "cdni"):
        raise ConfigError(f"bench parallel: mode must be dni or cdni, got {setup.mode!r}")
    if setup.pipe_schedule not in ("gpipe", "1f1b"):
        raise ConfigError(f"bench parallel: pipe_schedule must be gpipe or 1f1b, got {setup.pipe_schedule!r}")
    bad = [m for m in setup.micro_batches if setup.batch_size % m]
    if bad:
        raise ConfigError(f"bench parallel: micro_batches {bad} do not divide batch_size={setup.batch_size}")
    return setup


# ----------------------------------------------------------------------------------------------- model
def build_stages(setup: Setup, input_dim: int, classes: int) -> tuple[nn.Sequential, nn.Sequential]:
    """The two stages, with the same initial weights in every process (seeded)."""
    torch.manual_seed(setup.seed)
    blocks: list[nn.Module] = []
    width = input_dim
    for _ in range(setup.hidden_layers):
        norm = [nn.BatchNorm1d(setup.width)] if setup.batch_norm else []
        blocks.append(nn.Sequential(nn.Linear(width, setup.width), *norm, nn.ReLU()))
        width = setup.width
    head = nn.Linear(width, classes)
    return (nn.Sequential(nn.Flatten(), *blocks[: setup.split]),
            nn.Sequential(*blocks[setup.split:], head))


def build_dni_system(setup: Setup, stages: Sequence[nn.Module], lowrank: bool, classes: int = 10) -> System:
    """Two agents (``stage0``, ``stage1``) and a DNI interface between them; Adam everywhere."""
    context = classes if setup.mode == "cdni" else 0
    utility = UtilityModel((setup.width,), context_dim=context, rank=setup.rank if lowrank else None)
    agents = [Agent(f"stage{i}", m, torch.optim.Adam(m.parameters(), lr=setup.lr))
              for i, m in enumerate(stages)]
    iface = Interface("stage0->stage1", "stage0", "stage1", setup.mode, utility,
                      torch.optim.Adam(utility.parameters(), lr=setup.utility_lr))
    return System(agents, [iface])


@torch.no_grad()
def accuracy(stages: Sequence[nn.Module], x: torch.Tensor, y: torch.Tensor, batch: int = 1000) -> float:
    correct = 0
    for i in range(0, len(x), batch):
        h = x[i : i + batch]
        for m in stages:
            h = m(h)
        correct += int((h.argmax(1) == y[i : i + batch]).sum())
    return correct / max(1, len(x))


# --------------------------------------------------------------------------------------------- workers
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
    from ..drivers.ff import train_step

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
    from ..drivers.ff import local_system, train_step_distributed

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


# ------------------------------------------------------------------------------------------ the bench
def run_method(setup: Setup, method: str, procs: int, threads: int, steps: int, folder: Path,
               micro_batches: int | None = None, snapshots: bool = True, costs: bool = False) -> list[dict]:
    """Start ``procs`` fresh worker processes of ``method``; return what each rank wrote. The data set
    travels as ``data.pt`` beside ``folder`` (written once by :func:`save_data`)."""
    folder.mkdir(parents=True, exist_ok=True)
    spec = {"setup": {**dataclasses.asdict(setup), "micro_batches": list(setup.micro_batches)},
            "method": method, "threads": threads, "steps": steps, "folder": str(folder),
            "micro_batches": micro_batches, "snapshots": snapshots, "costs": costs,
            "data": str(folder.parent / "data.pt")}
    path = folder / "spec.json"
    path.write_text(json.dumps(spec))
    status = launch([sys.executable, "-m", "dni_agents.benches.parallel", str(path)], procs,
                    grace=setup.timeout + 10)
    if status != 0:
        raise RuntimeError(f"bench parallel: method {method} failed (exit status {status}; see its stderr)")
    return [torch.load(folder / f"rank{r}.pt", weights_only=True) for r in range(procs)]


def save_data(data: ImageDataset, folder: Path) -> None:
    """The tensors the workers train on, so each loads them in a blink (no parsing, no scikit-learn)."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(dataclasses.asdict(data), folder / "data.pt")


def curve_of(setup: Setup, data: ImageDataset, ranks: list[dict]) -> tuple[list[list[float]], float]:
    """Test accuracy at each snapshot (a subset of ``eval_samples``; the last on the whole test set)
    against the clock: a snapshot's time is the latest of the ranks' (when both stages had got there)."""
    stages = build_stages(setup, data.input_dim, data.num_classes)
    for m in stages:
        m.eval()
    n = min(setup.eval_samples, len(data.x_test))
    curve, final = [], 0.0
    points = zip(*(r["snapshots"] for r in ranks), strict=True)
    for k, parts in enumerate(points):
        for _steps, _seconds, state in parts:
            for name, sd in state.items():
                stages[int(name.removeprefix("stage"))].load_state_dict(sd)
        seconds = max(p[1] for p in parts)
        curve.append([seconds, accuracy(stages, data.x_test[:n], data.y_test[:n])])
        if k == len(ranks[0]["snapshots"]) - 1:
            final = accuracy(stages, data.x_test, data.y_test)
    return curve, final


def bench(
    quick: bool = False,
    out: Path | None = None,
    seeds: int | None = None,
    overrides: list[str] = (),
    only: list[str] | None = None,
) -> dict:
    """``dni-agents bench parallel``: the five methods (``only``: some of them) on the same samples, the
    in-process DNI references, the per-part costs and their projection to more stages. Writes JSON to
    ``out`` after every method, and a plot of accuracy against seconds beside it (``.png``)."""
    from ..runtime.report import write_report

    setup = apply_overrides(default_setup(quick), overrides)
    methods = list(METHODS)
    if only:
        known = (*METHODS, SLOW_B)
        unknown = [m for m in only if m not in known]
        if unknown:
            raise ConfigError(f"--only: {','.join(unknown)} is not a method (methods: {', '.join(known)})")
        methods = [m for m in METHODS if m in only]
    records: list[dict] = []
    report: dict = {"benchmark": "parallel", "quick": quick, "overrides": list(overrides),
                    "setup": dataclasses.asdict(setup), "records": records, "references": {}}
    if not only or SLOW_B in only:
        report[SLOW_B] = slow_b_study(quick, lambda: write_report(out, report))
        write_report(out, report)
    if not methods:
        return {SLOW_B: report[SLOW_B], "out": str(out) if out else None}
    data = load_dataset(setup.dataset)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # evaluation only, between runs: nothing else runs then
    with tempfile.TemporaryDirectory(prefix="dni-bench-parallel-") as tmp:
        try:
            for seed in range(seeds or 1):
                s = dataclasses.replace(setup, seed=setup.seed + seed)
                _bench_seed(s, data, methods, Path(tmp) / f"seed{seed}", report,
                            lambda: write_report(out, report))
        finally:
            torch.set_num_threads(threads)  # the caller's setting back
    report["projection"] = project(report["costs"], window=setup.max_staleness)
    report["summary"] = summarize(records, report["references"])
    write_report(out, report)
    png = None
    if out is not None:
        png = Path(out).with_suffix(".png")
        plot(report, png)
    return {**report["summary"], "out": str(out) if out else None, "png": str(png) if png else None}


def slow_b_study(quick: bool, save: Callable[[], None] | None = None) -> dict:
    """The hierarchical system on 2 processes with a slow B (it sleeps 10 ms per tick): A's updates per
    second under ``backprop`` (A waits for B every block) against ``dni`` (A waits only when its staleness
    window of 1 block is full, or never: a window as long as the run). Ratios are dni over backprop."""
    from ..drivers.hier.dist import measure_slow_b

    blocks = 20 if quick else 60
    runs: list[dict] = []
    out = {"b_delay_s": 0.01, "blocks": blocks, "runs": runs}
    for mode, window in (("backprop", None), ("dni", 1), ("dni", None)):
        runs.append(measure_slow_b(mode, 0.01, blocks=blocks, max_staleness=window))
        if save is not None:
            save()
    bp = runs[0]
    out["ratios"] = [{"max_staleness": r["max_staleness"],
                      "updates_per_s": r["updates_per_s"] / bp["updates_per_s"],
                      "windows_per_s": r["windows_per_s"] / bp["windows_per_s"]} for r in runs[1:]]
    return out


def _bench_seed(setup: Setup, data: ImageDataset, methods: list[str], tmp: Path, report: dict,
                save: Callable[[], None]) -> None:
    steps = setup.steps
    save_data(data, tmp)
    if "backprop_1thread" not in methods:  # otherwise its worker measures them after training
        ranks = run_method(setup, "costs", 1, 1, steps, tmp / "costs")
        report.setdefault("costs", ranks[0]["result"]["costs"])

    def record(method: str, ranks: list[dict], **extra: object) -> dict:
        curve, final = curve_of(setup, data, ranks)
        wall = max(r["result"]["seconds"] for r in ranks)
        row = {"method": method, "samples_per_s": steps * setup.batch_size / wall, "accuracy": final,
               "wall_s": wall, "curve": curve, "samples": steps * setup.batch_size, "steps": steps,
               "seed": setup.seed, "dataset": setup.dataset, **extra}
        print(f"bench parallel: {method:<22} {row['samples_per_s']:9.1f} samples/s  "
              f"accuracy {final:.4f}  ({wall:.1f} s)", file=sys.stderr, flush=True)
        return row

    for method in methods:
        if method.startswith("backprop"):
            threads = 2 if method == "backprop_2threads" else 1
            ranks = run_method(setup, method, 1, threads, steps, tmp / method, costs=threads == 1)
            row = record(method, ranks, procs=1, threads=threads)
            if threads == 1:
                report.setdefault("costs", ranks[0]["result"]["costs"])
        elif method == "pipelining":
            trials = {}
            for m in setup.micro_batches if len(setup.micro_batches) > 1 else ():
                ranks = run_method(setup, method, 2, 1, setup.pipe_trial_steps, tmp / f"trial{m}", m, False)
                wall = max(r["result"]["seconds"] for r in ranks)
                trials[str(m)] = setup.pipe_trial_steps * setup.batch_size / wall
            best = int(max(trials, key=trials.get)) if trials else setup.micro_batches[0]
            row = record(method, run_method(setup, method, 2, 1, steps, tmp / method, best),
                         procs=2, threads=1, micro_batches=best, schedule=setup.pipe_schedule,
                         trial_samples_per_s=trials)
        else:
            ranks = run_method(setup, method, 2, 1, steps, tmp / method)
            row = record(method, ranks, procs=2, threads=1, max_staleness=setup.max_staleness,
                         max_in_flight=ranks[0]["result"]["max_in_flight"],
                         utility_updates=ranks[0]["result"]["utility_updates"],
                         utility="linear" if method == "dni_full" else f"linear rank {setup.rank}")
            report["costs"].setdefault("comm", {"message_s": ranks[0]["result"]["comm_message_s"],
                                                "shape": [setup.batch_size, setup.width]})
            ref = REFERENCES[method]
            ref_row = record(ref, run_method(setup, ref, 1, 1, steps, tmp / ref), procs=1, threads=1)
            report["references"].setdefault(method, []).append(ref_row)
        report["records"].append(row)
        save()
    if "comm" not in report["costs"]:  # no DNI method ran: time a message on its own
        ranks = run_method(setup, "dni_full", 2, 1, 1, tmp / "comm", snapshots=False)
        report["costs"]["comm"] = {"message_s": ranks[0]["result"]["comm_message_s"],
                                   "shape": [setup.batch_size, setup.width]}


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def summarize(records: list[dict], references: dict[str, list[dict]]) -> dict:
    """Mean samples/s and accuracy per method (over seeds), and the issue's acceptance ratios."""
    by = {m: [r for r in records if r["method"] == m] for m in METHODS}
    speed = {m: _mean([r["samples_per_s"] for r in rs]) for m, rs in by.items() if rs}
    acc = {m: _mean([r["accuracy"] for r in rs]) for m, rs in by.items() if rs}
    ref = {m: _mean([r["accuracy"] for r in rs]) for m, rs in references.items()}
    checks: dict[str, dict] = {}
    for m in ("dni_full", "dni_lowrank"):
        if m not in speed:
            continue
        c: dict = {}
        for base in ("backprop_1thread", "backprop_2threads", "pipelining"):
            if base in speed:
                c[f"speedup_vs_{base}"] = speed[m] / speed[base]
        if m in ref:
            c["accuracy_gap_vs_inprocess"] = acc[m] - ref[m]
        c["meets_1.6x_backprop_1thread"] = c.get("speedup_vs_backprop_1thread", 0) >= 1.6
        c["meets_pipelining"] = c.get("speedup_vs_pipelining", 0) >= 1.0
        c["meets_accuracy"] = abs(c.get("accuracy_gap_vs_inprocess", 1.0)) <= 0.01
        checks[m] = c
    return {"samples_per_s": speed, "accuracy": acc, "inprocess_dni_accuracy": ref, "acceptance": checks}


# ------------------------------------------------------------------------------------------ projection
def project(costs: dict, stages: Sequence[int] = (2, 4, 8, 16), micro_batches: Sequence[int] | None = None,
            window: int = 1) -> list[dict]:
    """Speed-up over one-process backprop (one thread) of K stages on K cores, from measured part costs.

    Assumptions (stated in docs/distributed.md): a model of K identical stages, each costing the mean of
    the two measured stages (forward f, backward b, Adam step o: s = f + b + o); one core per stage;
    communication not overlapped with compute, each stage paying one message time c per step (half of
    its two boundaries' message + target); a middle stage of DNI also runs the utility model (forward
    u_f, update u_u, and with a staleness ``window`` > 0 a second forward: a target then comes back after
    the model was updated, and the update regresses a fresh prediction). Then, per batch:

    * backprop, one process: K·s;
    * DNI: s + u_f·(2 if window else 1) + u_u + c (every stage busy every step: no bubble);
    * pipeline with M micro-batches: (M + K − 1)·(f_M + b_M + c/M) + o, where f_M, b_M are the measured
      stage costs at micro-batch size B/M: idle fraction (K − 1)/(M + K − 1).
    """
    parts = costs["stages"]
    mean = lambda key, src=parts: sum(p[key] for p in src) / len(src)  # noqa: E731
    f, b, o = mean("forward_s"), mean("backward_s"), mean("optimizer_s")
    s = f + b + o
    c = costs.get("comm", {}).get("message_s", 0.0)
    rows = []
    micro = list(micro_batches or parts[0]["micro"])
    for k in stages:
        row: dict = {"stages": k, "backprop_s": k * s}
        for name, u in costs["utility"].items():
            forwards = 2 if window > 0 else 1
            row[f"dni_{name}_speedup"] = k * s / (s + forwards * u["forward_s"] + u["update_s"] + c)
        best = None
        for m in micro:
            fm = mean("forward_s", [p["micro"][str(m)] for p in parts])
            bm = mean("backward_s", [p["micro"][str(m)] for p in parts])
            speedup = k * s / ((int(m) + k - 1) * (fm + bm + c / int(m)) + o)
            row[f"pipeline_m{m}_speedup"] = speedup
            best = speedup if best is None else max(best, speedup)
        row["pipeline_best_speedup"] = best
        row["pipeline_idle_fraction"] = {str(m): (k - 1) / (int(m) + k - 1) for m in micro}
        rows.append(row)
    return rows


def plot(report: dict, path: Path) -> None:
    """Accuracy against wall-clock seconds, one line per method; the in-process DNI references dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in report["records"]:
        xs, ys = zip(*r["curve"], strict=True)
        ax.plot(xs, ys, marker="o", ms=3, label=f"{r['method']} ({r['samples_per_s']:.0f}/s)")
    for method, rows in report["references"].items():
        for r in rows:
            ax.axhline(r["accuracy"], ls="--", lw=0.8, color="gray")
            ax.annotate(f"{method} in-process", (0, r["accuracy"]), fontsize=7, color="gray")
    setup = report["setup"]
    ax.set(xlabel="wall-clock seconds", ylabel=f"test accuracy ({setup['dataset']})",
           title=f"MLP width {setup['width']}, 2 stages, {setup['samples']} samples per method")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    worker(sys.argv[1])
