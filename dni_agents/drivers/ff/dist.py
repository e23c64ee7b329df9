"""The feed-forward chain on several processes (``--procs N`` or ``torchrun``): layers placed in stages, a
message forward and a target back per step over :class:`TorchDistributed`."""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ...config import Config, config_to_yaml
from ...core import Message, System
from ...core.distributed import Route, TorchDistributed
from ...data import ImageDataset, batches, load_dataset
from ...logging import RunLogger
from ...runtime.checkpoint import load_system
from ...runtime.loop import Loop
from ...runtime.ranks import (
    join_process_group,
    local_system,
    open_distributed_run,
    placement_for,
    rank_checkpoint,
    save_rank_checkpoint,
)
from ...runtime.report import write_report
from ...runtime.run import with_threads
from ...runtime.stop import StopRequest
from .model import build_system
from .train import batch_accuracy


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
                out["logits"] = h.detach()
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


@with_threads()
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

    def checkpoint(step: int) -> None:  # on the cadence: the targets in flight first, and not the last
        nonlocal seconds, t0
        if log and step < tc.steps:
            drain(system, transport, step - 1)
            seconds += time.perf_counter() - t0
            t0 = time.perf_counter()
            save(step)

    stop = stop or StopRequest()
    loop = Loop(cfg, start, logger, checkpoint, log=log, progress=progress, stop=stop, rank=rank,
                check=lambda step, bar: stop.check_ranks(step, transport, finish, bar, logger))
    t0 = time.perf_counter()
    for step in loop:
        x, y = next(stream)
        system.track_stats = loop.logs(step)
        out = train_step_distributed(system, transport, chain, step, x, y, data.num_classes)
        if "loss" in out:
            losses.append(float(out["loss"]))
        if loop.logs(step) and "loss" in out:
            logger.agent(chain[-1], {"loss": losses[-1], "accuracy": batch_accuracy(out["logits"], y)}, step)
        loop.drain(system, step)
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
