"""Feed-forward driver: every layer is an agent, with a decoupled interface to the next layer.

The paper's fully connected nets (256 units, batch-norm, ReLU; 3 to 6 layers) and a small CNN, trained
with one of five methods, which are nothing but interface settings:

=========  ==================================================================================
backprop   every interface in ``backprop`` mode: the coupled, locked baseline
dni        synthetic gradients from U(h) at every interface
cdni       synthetic gradients from U(h, one-hot label)
unlock     cDNI plus synthetic inputs Î(x): every layer trains without waiting for any other
top-only   ``none``: only the top layer learns (the paper's "no bprop" floor)
=========  ==================================================================================

Test accuracy is always measured on the real forward chain x → layer0 → … → top (for ``unlock``
too: the synthetic inputs are a training device, never used at evaluation).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..config import Config, ConfigError, agent_names, config_to_yaml, load_config, parse_config
from ..core import Agent, Message, System
from ..core.distributed import Route, TorchDistributed
from ..data import ImageDataset, batches, load_dataset
from ..logging import RunLogger
from .common import (
    apply_checkpoint,
    build_interface,
    eval_hint,
    join_process_group,
    load_checkpoint,
    load_system,
    local_system,
    log_interfaces,
    make_optimizer,
    merge_rank_checkpoints,
    open_distributed_run,
    open_run,
    rank_checkpoint,
    rank_files,
    resolve_device,
    save_checkpoint,
    save_rank_checkpoint,
    write_report,
)
from .stop import StopRequest

METHODS: dict[str, list[str]] = {
    "backprop": ["interface_defaults.mode=backprop"],
    "dni": ["interface_defaults.mode=dni"],
    "cdni": ["interface_defaults.mode=cdni"],
    "unlock": ["interface_defaults.mode=cdni", "interface_defaults.synthetic_input={kind: mlp}"],
    "top-only": ["interface_defaults.mode=none"],
}
CHECKPOINT = "checkpoint.pt"


# ----------------------------------------------------------------------------------------------- model
def build_layers(cfg: Config, input_shape: tuple[int, ...], num_classes: int) -> list[nn.Module]:
    """One module per agent. MLP: [Linear, BN, ReLU] × (layers-1), then Linear. CNN: [Conv5×5, BN, ReLU,
    MaxPool] × (layers-1) (pooling in the first two blocks), then Linear."""
    f = cfg.ff
    layers: list[nn.Module] = []
    if f.model == "mlp":
        width = int(torch.tensor(input_shape).prod())
        for i in range(f.layers - 1):
            block: list[nn.Module] = [nn.Flatten()] if i == 0 else []
            block.append(nn.Linear(width, f.hidden))
            if f.batch_norm:
                block.append(nn.BatchNorm1d(f.hidden))
            layers.append(nn.Sequential(*block, nn.ReLU()))
            width = f.hidden
        layers.append(nn.Linear(width, num_classes))
        return layers
    channels, height, width = input_shape
    for i in range(f.layers - 1):
        block = [nn.Conv2d(channels, f.hidden, 5, padding=2)]
        if f.batch_norm:
            block.append(nn.BatchNorm2d(f.hidden))
        block.append(nn.ReLU())
        if i < 2:
            block.append(nn.MaxPool2d(3, stride=2, padding=1))
            height, width = (height + 1) // 2, (width + 1) // 2
        layers.append(nn.Sequential(*block))
        channels = f.hidden
    layers.append(nn.Sequential(nn.Flatten(), nn.Linear(channels * height * width, num_classes)))
    return layers


def message_shapes(layers: list[nn.Module], input_shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Shape (without batch) of what each layer sends; found by one dry forward pass in eval mode."""
    shapes, h = [], torch.zeros(2, *input_shape)
    with torch.no_grad():
        for layer in layers:
            was = layer.training
            h = layer.eval()(h)
            layer.train(was)
            shapes.append(tuple(h.shape[1:]))
    return shapes


def build_system(cfg: Config, data: ImageDataset, device: torch.device) -> System:
    """Agents layer0..layerN-1, each with its own optimizer, and an interface between neighbours."""
    torch.manual_seed(cfg.seed)
    names = agent_names(cfg)
    layers = build_layers(cfg, data.input_shape, data.num_classes)
    shapes = message_shapes(layers, data.input_shape)
    overrides = {a.name: a for a in cfg.agents}
    agents, interfaces = [], []
    for i, (name, layer) in enumerate(zip(names, layers, strict=True)):
        layer.to(device)
        lr = (overrides[name].lr if name in overrides else None) or cfg.trainer.lr
        period = overrides[name].period if name in overrides else 1
        opt = make_optimizer(cfg.trainer.optimizer, layer.parameters(), lr, cfg.trainer.weight_decay,
                             cfg.trainer.fused)
        agents.append(Agent(name, layer, opt, period=period))
        if i + 1 < len(names):
            interfaces.append(
                build_interface(
                    cfg, name, names[i + 1], shapes[i], device,
                    context_dim=data.num_classes, source_shape=data.input_shape,
                )
            )
    return System(agents, interfaces, on_nonfinite=cfg.trainer.on_nonfinite)


# ------------------------------------------------------------------------------------------- training
def train_step(system: System, step: int, x: torch.Tensor, y: torch.Tensor, num_classes: int) -> dict:
    """One clock step: each layer ticks in turn; with DNI each one has updated before the next runs."""
    agents = list(system.agents.values())
    onehot = F.one_hot(y, num_classes).float()
    sent: dict[str, torch.Tensor] = {}
    for i, agent in enumerate(agents):
        with system.tick(agent, step) as t:
            if i == 0:
                inp = x
            else:
                inbound = system.inbound(agent.name)[0]
                inp = t.receive(inbound, source=x if inbound.synthetic_input is not None else None)
            out = agent.module(inp)
            if i == len(agents) - 1:
                loss = F.cross_entropy(out, y)
                t.add_loss(loss)
            else:
                outbound = system.outbound(agent.name)[0]
                t.send(outbound, out, context=onehot)
                sent[outbound.name] = out.detach()
    system.settle()
    system.check_settled()
    accuracy = (out.detach().argmax(1) == y).float().mean()
    return {"loss": loss.detach(), "accuracy": accuracy, "messages": sent}


@torch.no_grad()
def evaluate_chain(system: System, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> dict:
    """Accuracy and loss of the real forward chain (eval mode: batch-norm running statistics)."""
    modules = [a.module for a in system.agents.values()]
    for m in modules:
        m.eval()
    correct, total_loss = 0, 0.0
    for i in range(0, len(x), batch_size):
        h = x[i : i + batch_size]
        for m in modules:
            h = m(h)
        correct += int((h.argmax(1) == y[i : i + batch_size]).sum())
        total_loss += float(F.cross_entropy(h, y[i : i + batch_size], reduction="sum"))
    for m in modules:
        m.train()
    return {"test_accuracy": correct / len(x), "test_loss": total_loss / len(x)}


@torch.no_grad()
def top_messages(system: System, x: torch.Tensor) -> torch.Tensor:
    """What the last hidden layer sends to the top for inputs x (eval mode): the projector's vectors."""
    modules = [a.module for a in system.agents.values()][:-1]
    h = x
    for m in modules:
        m.eval()
        h = m(h)
        m.train()
    return h


def train(
    cfg: Config,
    run_dir: Path,
    resume: Path | None = None,
    data: ImageDataset | None = None,
    log: bool = True,
    progress: bool = True,
    stop_at: int | None = None,
    stop: StopRequest | None = None,
) -> dict:
    """Train ``cfg`` and return the final metrics. ``stop_at`` ends early (as a crash would), for tests;
    ``stop`` (the CLI's): on SIGINT/SIGTERM checkpoint at the next step boundary and raise Interrupted."""
    device = resolve_device(cfg.device)
    data = data or load_dataset(cfg.ff.dataset, cfg.ff.data_root)
    x_train, y_train = data.x_train.to(device), data.y_train.to(device)
    x_test, y_test = data.x_test.to(device), data.y_test.to(device)
    system = build_system(cfg, data, device)
    start = 0

    def restore(state: dict) -> int:
        nonlocal start
        load_system(system, state["system"])
        start = int(state["step"])
        return start  # steps are logged at ``step``: the crashed run's from here on are dropped

    run_dir, logger = open_run(cfg, run_dir, resume, log, device, CHECKPOINT, restore)

    tc = cfg.trainer
    stream = batches(x_train, y_train, tc.batch_size, torch.Generator().manual_seed(cfg.seed), start=start)
    end = tc.steps if stop_at is None else min(stop_at, tc.steps)
    bar = tqdm(total=end, initial=start, desc=cfg.name, disable=not progress, leave=False, unit="step")
    stop = stop or StopRequest()

    def save(step: int) -> Path | None:
        if not log:
            return None
        save_checkpoint(Path(run_dir) / CHECKPOINT, {"step": step, "system": system.state_dict()})
        return Path(run_dir) / CHECKPOINT

    t0 = time.perf_counter()
    for step in range(start, end):
        stop.check(step, save, bar, logger)
        x, y = next(stream)
        log_now = step % cfg.log.every == 0 or step == tc.steps - 1
        system.track_stats = log and log_now
        out = train_step(system, step, x, y, data.num_classes)
        if log and log_now:
            top = list(system.agents)[-1]
            logger.agent(top, {"loss": float(out["loss"]), "accuracy": float(out["accuracy"])}, step)
            log_interfaces(logger, system, step)
            bar.set_postfix(loss=f"{float(out['loss']):.3f}")
        elif not log:
            system.drain_stats()
        if log and step % cfg.log.histogram_every == 0:
            for name, message in out["messages"].items():
                logger.message_histogram(name, message, step)
        if log and tc.eval_every and (step + 1) % tc.eval_every == 0 and step + 1 < tc.steps:
            logger.scalars("eval", evaluate_chain(system, x_test, y_test), step)
        if tc.checkpoint_every and (step + 1) % tc.checkpoint_every == 0:
            save(step + 1)
        bar.update(1)
    bar.close()
    seconds = time.perf_counter() - t0
    if end < tc.steps:  # stopped early on purpose: leave it as a crash would
        logger.close()
        return {}
    metrics = evaluate_chain(system, x_test, y_test)
    metrics.update(steps=tc.steps, steps_per_s=(end - start) / max(seconds, 1e-9))
    if log:
        logger.scalars("eval", {k: metrics[k] for k in ("test_accuracy", "test_loss")}, tc.steps)
        n = min(cfg.log.embedding_samples, len(x_test))
        if n:
            vectors = top_messages(system, x_test[:n])
            logger.embedding("messages/top_input", vectors, y_test[:n].tolist(), tc.steps)
        save_checkpoint(Path(run_dir) / CHECKPOINT, {"step": tc.steps, "system": system.state_dict()})
        metrics["run_dir"] = str(run_dir)
    logger.close()
    return metrics


def evaluate(run_dir: Path) -> dict:
    """``dni-agents eval RUN_DIR``: test accuracy of the checkpointed chain (of a run on several processes
    too: its ranks' checkpoints put together, evaluated in this one process)."""
    run_dir = Path(run_dir)
    cfg = load_config(str(run_dir / "config.yaml"))
    device = resolve_device(cfg.device)
    data = load_dataset(cfg.ff.dataset, cfg.ff.data_root)
    system = build_system(cfg, data, device)
    if not (run_dir / CHECKPOINT).is_file() and rank_files(run_dir):
        path, state = run_dir / "checkpoint.rank*.pt", merge_rank_checkpoints(run_dir, device)
    else:
        path = run_dir / CHECKPOINT
        state = load_checkpoint(path, device)

    def restore(state: dict) -> int:
        load_system(system, state["system"])
        return int(state["step"])

    step = apply_checkpoint(path, state, restore, eval_hint(run_dir))
    metrics = evaluate_chain(system, data.x_test.to(device), data.y_test.to(device))
    return {"run_dir": str(run_dir), "step": step, **metrics}


# ------------------------------------------------------------------------------------------ benchmark
def method_config(base: str, method: str, overrides: list[str] = ()) -> Config:
    return load_config(base, [*METHODS[method], *overrides])


def time_methods(methods: list[str], steps: int, repeats: int = 3, seed: int = 0) -> list[dict]:
    """Seconds per training step of the paper's 3-layer FCN shape (784-256-256-10, batch 256, random
    inputs), methods interleaved ``repeats`` times so machine noise hits them alike; best of the repeats."""
    gen = torch.Generator().manual_seed(seed)
    data = ImageDataset(
        "timing", torch.randn(2048, 1, 28, 28, generator=gen), torch.randint(0, 10, (2048,), generator=gen),
        torch.randn(10, 1, 28, 28), torch.zeros(10, dtype=torch.long), 10,
    )
    best: dict[str, float] = {}
    for _ in range(repeats):
        for method in methods:
            cfg = parse_config(
                {"driver": "ff", "name": f"timing-{method}", "seed": seed,
                 "trainer": {"steps": steps, "batch_size": 256, "lr": 1e-4}, "ff": {"layers": 3}},
                METHODS[method],
            )
            system = build_system(cfg, data, torch.device("cpu"))
            system.track_stats = False
            stream = batches(data.x_train, data.y_train, 256, torch.Generator().manual_seed(seed))
            for step in range(5):  # warm-up
                train_step(system, step, *next(stream), 10)
            t0 = time.perf_counter()
            for step in range(5, 5 + steps):
                train_step(system, step, *next(stream), 10)
            per_step = (time.perf_counter() - t0) / steps
            best[method] = min(best.get(method, float("inf")), per_step)
    return [
        {"method": m, "dataset": "timing", "model": "mlp3-784-256-10", "test_accuracy": None,
         "steps_per_s": 1.0 / best[m], "steps": steps, "seed": seed, "batch_size": 256,
         "cost_vs_backprop": best[m] / best["backprop"] if "backprop" in best else None}
        for m in methods
    ]


def _model_name(cfg: Config) -> str:
    return f"{cfg.ff.model}{cfg.ff.layers}"


FULL_MODELS = [("mlp", 3), ("mlp", 4), ("mlp", 5), ("mlp", 6), ("cnn", 3)]


def bench(
    quick: bool = False,
    out: Path | None = None,
    seeds: int | None = None,
    overrides: list[str] = (),
    only: list[str] | None = None,
) -> dict:
    """``dni-agents bench ff``: every method on digits (quick, 3 seeds) or Fashion-MNIST MLPs of 3–6
    layers and a CNN (full, 1 seed), plus the cost of a DNI step against a backprop step (on the CPU).
    ``overrides`` apply to every run (``device=cuda``); ``only`` keeps the rows whose model (``mlp4``) or
    method (``cdni``) it names. Writes JSON to ``out``."""
    seeds = seeds or (3 if quick else 1)
    runs: list[tuple[str, list[str]]] = []
    if quick:
        runs = [("ff_digits", [])]
    else:
        runs = [(f"ff_fashion_{m}", [f"ff.layers={n}"]) for m, n in FULL_MODELS]
    results: list[dict] = []
    report = {"benchmark": "ff", "quick": quick, "overrides": list(overrides), "results": results}

    jobs = [(b, extra, method, seed) for b, extra in runs for method in METHODS for seed in range(seeds)]
    if only:
        row = {base + str(extra): _model_name(load_config(base, extra)) for base, extra in runs}
        jobs = [j for j in jobs if j[2] in only or row[j[0] + str(j[1])] in only]
        if not jobs:
            raise ConfigError(
                f"--only: {','.join(only)} matches no row (models: {', '.join(row.values())}; "
                f"methods: {', '.join(METHODS)})"
            )
    for base, extra, method, seed in tqdm(jobs, desc="bench ff", unit="run"):
        cfg = method_config(base, method, [*extra, *overrides, f"seed={seed}"])
        metrics = train(cfg, Path("runs") / cfg.name, log=False, progress=False)
        results.append(
            {"method": method, "dataset": cfg.ff.dataset, "model": _model_name(cfg),
             "test_accuracy": metrics["test_accuracy"], "steps_per_s": metrics["steps_per_s"],
             "steps": metrics["steps"], "seed": seed, "device": cfg.device}
        )
        tqdm.write(f"{results[-1]['model']:>6} {method:>9} seed {seed}: "
                   f"test accuracy {metrics['test_accuracy']:.4f}, {metrics['steps_per_s']:.0f} steps/s")
        write_report(out, report)
    results += time_methods(["backprop", "dni"], steps=100)
    timing = {r["method"]: r for r in results if r["dataset"] == "timing"}
    report["dni_cost_vs_backprop"] = timing["dni"]["cost_vs_backprop"]
    write_report(out, report)
    summary = {}
    for r in results:
        if r["dataset"] != "timing":
            summary.setdefault(f"{r['model']}/{r['method']}", []).append(r["test_accuracy"])
    return {"test_accuracy": {k: sum(v) / len(v) for k, v in summary.items()},
            "dni_cost_vs_backprop": report["dni_cost_vs_backprop"], "out": str(out) if out else None}


# ----------------------------------------------------------------------------------------- distributed
def stage_placement(names: list[str], world_size: int) -> dict[str, int]:
    """Split the chain into ``world_size`` contiguous stages as evenly as possible (layer i on rank
    ``i * world_size // layers``)."""
    if world_size > len(names):
        raise ConfigError(f"--procs: {world_size} processes for {len(names)} layers (at most one per layer)")
    return {name: i * world_size // len(names) for i, name in enumerate(names)}


def placement_for(cfg: Config, world_size: int) -> dict[str, int]:
    """``distributed.placement`` (every layer must be placed, every rank must hold one) or stages."""
    names = agent_names(cfg)
    placement = cfg.distributed.placement
    if placement is None:
        return stage_placement(names, world_size)
    missing = [n for n in names if n not in placement]
    if missing:
        raise ConfigError(f"distributed.placement: no rank for {', '.join(missing)} (give every layer one)")
    bad = {n: r for n, r in placement.items() if r >= world_size}
    if bad:
        raise ConfigError(
            f"distributed.placement: ranks {bad} but only {world_size} processes (0..{world_size - 1})"
        )
    idle = sorted(set(range(world_size)) - set(placement.values()))
    if idle:
        raise ConfigError(f"distributed.placement: ranks {idle} hold no layer (use fewer processes)")
    return dict(placement)


def train_step_distributed(
    system: System, transport: TorchDistributed, chain: list[str], step: int, x: torch.Tensor,
    y: torch.Tensor, num_classes: int,
) -> dict:
    """This rank's part of one clock step. First the staleness window: wait for old targets and learn from
    them (with ``max_staleness=0`` this makes the step equal the in-process one), then tick the local
    layers in chain order, waiting for each remote input; a locked sender waits for its target."""
    transport.throttle(step)
    system.settle()
    onehot = F.one_hot(y, num_classes).float()
    out: dict = {"messages": {}}
    for i, name in enumerate(chain):
        agent = system.agents.get(name)
        if agent is None:
            continue
        with system.tick(agent, step) as t:
            if i == 0:
                inp = x
            else:
                inbound = system.inbound(name)[0]
                if inbound.synthetic_input is None:
                    transport.wait_message(inbound.name, step)
                elif step > transport.max_staleness:  # forward unlocked, within the window too
                    transport.wait_message(inbound.name, step - transport.max_staleness - 1)
                inp = t.receive(inbound, source=x if inbound.synthetic_input is not None else None)
            h = agent.module(inp)
            if i == len(chain) - 1:
                loss = F.cross_entropy(h, y)
                t.add_loss(loss)
                out["loss"] = loss.detach()
                out["accuracy"] = (h.detach().argmax(1) == y).float().mean()
            else:
                outbound = system.outbound(name)[0]
                t.send(outbound, h, context=onehot)
                out["messages"][outbound.name] = h.detach()
    for iface in system.interfaces.values():
        if iface.locked and iface.sender in system.agents and transport.is_remote(iface.name):
            transport.wait_target(iface.name, step)
            system.settle()
    system.settle()
    system.check_settled()
    return out


@torch.no_grad()
def evaluate_pipeline(
    system: System, transport: TorchDistributed, chain: list[str], x: torch.Tensor, y: torch.Tensor,
    batch_size: int = 1000,
) -> dict:
    """The real forward chain across ranks (eval mode): test batch k travels as the out-of-band message of
    step ``-(k + 1)``. Only the rank of the top layer gets the metrics; the others return {}."""
    modules = {name: a.module for name, a in system.agents.items()}
    for m in modules.values():
        m.eval()
    correct, total_loss = 0, 0.0
    for k, start in enumerate(range(0, len(x), batch_size)):
        step = -(k + 1)
        h = x[start : start + batch_size]
        for i, name in enumerate(chain):
            if name not in modules:
                continue
            if i > 0:
                inbound = system.inbound(name)[0]
                transport.wait_message(inbound.name, step)
                h = transport.take_message(inbound.name, step).tensor
            h = modules[name](h)
            if i < len(chain) - 1:
                transport.put_message(Message(system.outbound(name)[0].name, step, h))
        if chain[-1] in modules:
            target = y[start : start + batch_size]
            correct += int((h.argmax(1) == target).sum())
            total_loss += float(F.cross_entropy(h, target, reduction="sum"))
    for m in modules.values():
        m.train()
    if chain[-1] not in modules:
        return {}
    return {"test_accuracy": correct / len(x), "test_loss": total_loss / len(x)}


def drain(system: System, transport: TorchDistributed, step: int) -> None:
    """After ``step``: wait until nothing of steps ``<= step`` is in flight across the process boundary
    (every target back, every real input that a synthetic one learns from here) and learn from it all.
    A checkpoint is written only then, so it holds everything an exact resume needs. With
    ``max_staleness=0`` this is what the next step would do first anyway, so it changes nothing."""
    transport.throttle(step + 1 + transport.max_staleness)
    for iface in system.interfaces.values():
        if iface.receiver in system.agents and iface.synthetic_input is not None and transport.is_remote(
            iface.name
        ):
            transport.wait_message(iface.name, step)
    system.settle()


def train_distributed(
    cfg: Config,
    run_dir: Path,
    data: ImageDataset | None = None,
    log: bool = True,
    progress: bool = True,
    resume: Path | None = None,
    stop: StopRequest | None = None,
) -> dict:
    """This process's share of a run whose layers are spread over the ranks of a process group (started
    by ``dni-agents train CONFIG --procs N`` or ``torchrun``; RANK/WORLD_SIZE/MASTER_* in the environment).

    Every rank builds the whole system from the seed (so parameters are the in-process ones) and keeps its
    own layers; every rank replays the same batch stream, so labels never travel. Rank 0 creates the run
    folder; rank r writes ``checkpoint.rank{r}.pt`` (its agents and interfaces, every
    ``trainer.checkpoint_every`` steps and at the end, each after a :func:`drain`) and
    ``metrics.rank{r}.json``, and logs under ``rank{r}``. ``resume``: continue that run folder from the
    newest step every rank has a checkpoint of. The top layer's rank has the test metrics (of the chain,
    evaluated at the end only). ``stop``: on a signal to any rank, all stop at one step boundary with a
    checkpoint each (:meth:`StopRequest.check_ranks`)."""
    dc = cfg.distributed
    rank, world, device, backend = join_process_group(cfg)
    placement = placement_for(cfg, world)
    data = data or load_dataset(cfg.ff.dataset, cfg.ff.data_root)
    full = build_system(cfg, data, device)
    chain = list(full.agents)
    routes = [Route(i.name, i.sender, i.receiver, replies=i.mode != "none")
              for i in full.interfaces.values()]
    first_loss, seconds = None, 0.0

    def restore(state: dict) -> None:  # into this rank's agents and interfaces, before the transport exists
        nonlocal first_loss, seconds
        load_system(local_system(full, placement, rank, None), state["system"])
        first_loss, seconds = state.get("first_loss"), state["seconds"]

    run_path, start, _ = open_distributed_run(cfg, run_dir, resume, log, rank, world, placement, device,
                                              "--procs and distributed.placement", restore)
    transport = TorchDistributed(placement, routes, max_staleness=dc.max_staleness, timeout=dc.timeout,
                                 device=device if backend == "nccl" else "cpu", deliver_to=device)
    system = local_system(full, placement, rank, transport)
    log_dir = run_path if rank == 0 else run_path / f"rank{rank}"
    logger = RunLogger(log_dir, config_to_yaml(cfg) if rank == 0 else None, enabled=log,
                       purge_step=start if resume is not None else None)  # logged at ``step``

    x_train, y_train = data.x_train.to(device), data.y_train.to(device)
    tc = cfg.trainer
    stream = batches(x_train, y_train, tc.batch_size, torch.Generator().manual_seed(cfg.seed), start=start)
    bar = tqdm(total=tc.steps, initial=start, desc=f"{cfg.name} rank {rank}",
               disable=not progress or rank != 0, leave=False, unit="step")
    losses: list[float] = []
    keep = world + 1

    def save(step: int) -> None:
        save_rank_checkpoint(run_path, rank, step, {
            "placement": placement, "system": system.state_dict(), "seconds": seconds,
            "first_loss": losses[0] if losses and first_loss is None else first_loss,
        }, keep)

    def finish(step: int) -> Path | None:  # stopped by a signal at this boundary, on every rank
        nonlocal seconds
        if step > start:  # nothing was sent yet by this process otherwise
            drain(system, transport, step - 1)
        seconds += time.perf_counter() - t0
        if not log:
            return None
        save(step)
        return rank_checkpoint(run_path, rank)

    stop = stop or StopRequest()
    t0 = time.perf_counter()
    for step in range(start, tc.steps):
        stop.check_ranks(step, transport, finish, bar, logger)
        x, y = next(stream)
        log_now = log and (step % cfg.log.every == 0 or step == tc.steps - 1)
        system.track_stats = log_now
        out = train_step_distributed(system, transport, chain, step, x, y, data.num_classes)
        if "loss" in out:
            losses.append(float(out["loss"]))
        if log_now:
            if "loss" in out:
                logger.agent(chain[-1], {"loss": losses[-1], "accuracy": float(out["accuracy"])}, step)
            log_interfaces(logger, system, step)
        elif not log:
            system.drain_stats()
        if log and tc.checkpoint_every and (step + 1) % tc.checkpoint_every == 0 and step + 1 < tc.steps:
            drain(system, transport, step)
            seconds += time.perf_counter() - t0
            t0 = time.perf_counter()
            save(step + 1)
        bar.update(1)
    bar.close()
    if tc.steps:
        drain(system, transport, tc.steps - 1)  # the last targets, and real inputs Î learns from
    seconds += time.perf_counter() - t0
    metrics: dict = {"rank": rank, "agents": list(system.agents), "steps": tc.steps, "start": start,
                     "steps_per_s": (tc.steps - start) / max(seconds, 1e-9),
                     "max_in_flight": transport.max_in_flight}
    if losses or first_loss is not None:
        metrics["train_loss_first"] = first_loss if first_loss is not None else losses[0]
    if losses:
        metrics["train_loss_last"] = losses[-1]
    metrics.update(evaluate_pipeline(system, transport, chain, data.x_test.to(device),
                                     data.y_test.to(device)))
    if log:
        if "test_accuracy" in metrics:
            logger.scalars("eval", {k: metrics[k] for k in ("test_accuracy", "test_loss")}, tc.steps)
        save(tc.steps)
        metrics["run_dir"] = str(run_path)
        write_report(run_path / f"metrics.rank{rank}.json", metrics)
    logger.close()
    transport.close()
    dist.destroy_process_group()
    return metrics
