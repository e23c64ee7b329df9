"""The multi-agent driver on several processes (``dni-agents train CONFIG --procs N`` or ``torchrun``): each
network learns on its own rank; what crosses between ranks during learning is what a channel carries, the
message forward and its target (the receiver's true gradient) back, over :class:`TorchDistributed`.

* **Playing**: every rank plays the same episode in its own environment copies (the same seeds and one
  generator, as in process), so observations, actions and rewards never travel. To play, a rank needs every
  network as it is now: at the start of each update each rank sends its networks' parameters and buffers
  to the others (one flat out-of-band message per network and rank), so all ranks act with the same
  networks. Acting is cheap (the main job: 9% of an update; learning 91%); learning is what DNI decouples.
* **Learning**: every rank runs the same PPO epochs and minibatches (the permutation comes from the one
  generator) and ticks only its own networks. A minibatch is one block of clock steps on the wire
  (:func:`~dni_agents.drivers.marl.learn.block_steps`): a ``dni``/``cdni`` sender updates with ĝ at once and
  never waits inside a minibatch; its utility model learns from the minibatch's targets before the next one
  (``distributed.max_staleness`` N > 0: up to N minibatches later, so sender and receiver overlap more and
  the run no longer equals the in-process one). A ``backprop`` sender's tick waits for the true gradients
  of its messages (the in-process joint tick split at the process boundary: equal up to float order); two
  ranks that wait on each other that way are refused. ``none``: the receiver acknowledges each message.
* **cDNI gates** are computed where the message is sent from the episode every rank has (the receiver's
  action probabilities and advantages); a gate that bootstraps from the ĝ a receiver on another rank gets
  for its own messages would need that rank's utility model and is refused.

With N = 0 the run equals the in-process one bit for bit (``dni``, ``cdni``, ``none``; one thread per
process, as in process). Rank r writes ``checkpoint.rank{r}.pt`` (its networks and the interface halves it
holds) and ``metrics.rank{r}.json``; every rank ends with every network, so every rank evaluates (the same
greedy episodes and controls, on the held-out environment of ``marl.eval_env_kwargs``; rank 0 logs them).
Evaluation runs at the end only here: ``trainer.eval_every`` and ``time_to_success`` are the one-process
run's. ``dni-agents eval RUN_DIR`` puts the ranks together.
"""

from __future__ import annotations

import time
from contextlib import closing
from pathlib import Path

import torch
import torch.distributed as dist

from ...config import Config, ConfigError, config_to_yaml
from ...core import Message
from ...core.distributed import Route, TorchDistributed
from ...logging import RunLogger
from ...runtime.checkpoint import load_system
from ...runtime.loop import Loop, step_generator
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
from .build import build
from .controls import FidelityHistory, channel_stats
from .env import eval_config, make_env
from .gates import SYNTHETIC
from .learn import block_steps, ppo_update
from .metrics import channel_aliases, eval_curves, log_episode, log_losses, stat_tag
from .parts import Channel, Group
from .rollout import Player, calibrate_messages
from .train import Evaluator, episode_metrics, threads


def check_split(groups: list[Group], channels: list[Channel], placement: dict[str, int]) -> None:
    """Refuse what cannot cross ranks: a cDNI gate that bootstraps from another rank's utility model, and
    ``backprop`` channels whose senders' ranks would wait on each other (a cycle across ranks)."""
    by_name = {g.name: g for g in groups}
    for c in channels:
        receiver = by_name[c.receiver]
        if c.mode == "cdni" and placement[c.sender] != placement[c.receiver] and any(
            o.mode in SYNTHETIC for o in receiver.outbound
        ):
            raise ConfigError(
                f"distributed.placement: {c.name} is cdni and its gate holds the ĝ {c.receiver} gets for its "
                f"own messages, which {c.receiver}'s rank predicts; put {c.sender} and {c.receiver} on one "
                "rank, or use mode dni on one of the two channels"
            )
    waits: dict[int, set[int]] = {}
    for c in channels:
        a, b = placement[c.sender], placement[c.receiver]
        if c.mode == "backprop" and a != b:
            waits.setdefault(a, set()).add(b)  # a's tick waits for b's backward pass

    def reaches(src: int, dst: int, seen: set[int]) -> bool:
        return any(n == dst or (n not in seen and reaches(n, dst, seen | {n})) for n in waits.get(src, ()))

    for a, bs in waits.items():
        for b in bs:
            if reaches(b, a, {b}):
                raise ConfigError(
                    f"distributed.placement: backprop channels run both ways between ranks {a} and {b}, so "
                    "each would wait for the other's backward pass; put those agents on one rank (they then "
                    "update in one tick) or make one of the channels dni"
                )


def weight_routes(groups: list[Group], placement: dict[str, int]) -> list[Route]:
    """One out-of-band route per network and other rank, addressed to the first network there: how its
    parameters reach the ranks that play with it."""
    first: dict[int, str] = {}
    for name, r in placement.items():
        first.setdefault(r, name)
    return [Route(f"{g.name}=>rank{r}", g.name, to, replies=False)
            for g in groups for r, to in sorted(first.items()) if r != placement[g.name]]


def share_networks(groups: list[Group], placement: dict[str, int], rank: int, transport: TorchDistributed,
                   update: int) -> None:
    """Send this rank's networks (parameters and buffers, one flat float64 vector each: exact for float32)
    to every other rank, and load theirs, as they are before ``update``."""
    step = -(update + 1)  # out of band: never throttled, never acknowledged
    others = sorted(set(placement.values()) - {rank})
    for g in groups:
        if placement[g.name] == rank:
            flat = torch.cat([t.detach().reshape(-1).double() for t in g.net.state_dict().values()])
            for r in others:
                transport.put_message(Message(f"{g.name}=>rank{r}", step, flat))
    for g in groups:
        if placement[g.name] != rank:
            name = f"{g.name}=>rank{rank}"
            transport.wait_message(name, step)
            flat = transport.take_message(name, step).tensor
            tensors = list(g.net.state_dict().values())
            if flat.numel() != sum(t.numel() for t in tensors):
                raise ConfigError(f"rank {rank}: {g.name}'s parameters from rank {placement[g.name]} do not "
                                  "fit the network built here (run every rank with the same config)")
            with torch.no_grad():
                for t, part in zip(tensors, flat.split([t.numel() for t in tensors]), strict=True):
                    t.copy_(part.view_as(t))


@with_threads(threads)
def train_distributed(
    cfg: Config, run_dir: Path, log: bool = True, progress: bool = True, resume: Path | None = None,
    stop: StopRequest | None = None,
) -> dict:
    """This process's share of a multi-agent run on several ranks (see the module docstring)."""
    dc, mc, tc = cfg.distributed, cfg.marl, cfg.trainer
    rank, world, device, _ = join_process_group(cfg)
    placement = placement_for(cfg, world, what="agent")
    full, groups, channels = build(cfg, make_env(cfg), device)
    eval_config(cfg)  # an evaluation environment that refuses marl.eval_env_kwargs fails before training
    check_split(groups, channels, placement)
    block = block_steps(cfg)
    routes = [Route(c.name, c.sender, c.receiver, replies=c.mode != "none", block=block)
              for c in channels if c.interface is not None] + weight_routes(groups, placement)
    clock, seconds = 0, 0.0

    def restore(state: dict) -> None:  # into this rank's networks and interface halves
        nonlocal clock
        load_system(local_system(full, placement, rank, None), state["system"])
        clock = int(state["clock"])

    run_path, start, _ = open_distributed_run(cfg, run_dir, resume, log, rank, world, placement, device,
                                              "--procs and distributed.placement", restore)
    transport = TorchDistributed(placement, routes, max_staleness=dc.max_staleness, timeout=dc.timeout,
                                 capacity=max(1024, 2 * block * (dc.max_staleness + 2)))
    system = local_system(full, placement, rank, transport)
    mine = [g.name for g in groups if g.name in system.agents]
    logger = RunLogger(run_path if rank == 0 else run_path / f"rank{rank}",
                       config_to_yaml(cfg) if rank == 0 else None, enabled=log,
                       purge_step=start if resume is not None else None)  # logged at ``update``
    env_steps, fidelity, curve = 0, FidelityHistory(), []

    def drain() -> None:  # every target of every minibatch so far is back and learned from
        transport.throttle((clock + 1 + dc.max_staleness) * block)
        system.settle()

    def save(update: int) -> None:
        state = {"placement": placement, "clock": clock, "system": system.state_dict()}
        save_rank_checkpoint(run_path, rank, update, state, keep=world + 1)

    def finish(update: int) -> Path | None:  # stopped by a signal at this boundary, on every rank
        drain()
        if not log:
            return None
        save(update)
        return rank_checkpoint(run_path, rank)

    def checkpoint(update: int) -> None:  # on the cadence, not the last (written after the evaluation)
        if log and update < tc.steps:
            drain()
            save(update)

    player = Player(cfg, groups, channels, device, mc.num_envs)
    with closing(player):
        if mc.message_rms is not None and start == 0:  # the frozen control's scale, on every rank alike
            calibrate_messages(player, mc.message_rms, seed=cfg.seed * 100_000 * mc.num_envs)
        stop = stop or StopRequest()
        loop = Loop(cfg, start, logger, checkpoint, log=log, progress=progress, stop=stop, rank=rank,
                    unit="update", check=lambda step, bar: stop.check_ranks(step, transport, finish, logger),
                    stat_tag=stat_tag(channel_aliases(channels)))
        for update in loop:
            t0 = time.perf_counter()
            share_networks(groups, placement, rank, transport, update)
            generator = step_generator(cfg.seed, update)
            ep = player.play(seed=(cfg.seed * 100_000 + update) * mc.num_envs, generator=generator)
            measure = loop.measured(update)
            losses, clock = ppo_update(cfg, system, groups, player, ep, generator, clock, track=measure,
                                       transport=transport)
            seconds += time.perf_counter() - t0
            env_steps += ep.steps
            metrics = episode_metrics(cfg, ep, groups)
            if measure:
                curve.append(((update + 1) * mc.num_envs * mc.max_steps, metrics["return/mean"]))
                usage = channel_stats(ep, channels)
                fidelity.add(update, {c.name: usage[c.name] for c in channels  # sent from here
                                      if c.name in usage and c.sender in system.agents})
                fidelity.add(update, loop.drain(system, update) or {})  # on the senders' ranks
            if loop.logs(update):
                log_losses(logger, losses, update)
                logger.scalar("perf/env_steps_per_s", env_steps / max(seconds, 1e-9), update)
                if rank == 0:  # every rank played the same episode: one copy of what it shows
                    log_episode(logger, cfg, ep, channels, metrics, usage, update)
        t0 = time.perf_counter()
        drain()
        share_networks(groups, placement, rank, transport, tc.steps)  # every rank ends with every network
        seconds += time.perf_counter() - t0
    with closing(Evaluator(cfg, groups, channels, device)) as evaluator:  # held-out, training env, controls
        result = evaluator.final(mc.eval_episodes)
        separate = evaluator.separate
    result.pop("_episodes", None)
    result.update(rank=rank, agents=mine, updates=tc.steps, start=start, train_seconds=seconds,
                  env_steps_per_s=env_steps / max(seconds, 1e-9), max_in_flight=transport.max_in_flight)
    result.update(fidelity.second_half(tc.steps))  # this rank's channels' held-out ĝ fidelity
    if log:
        if rank == 0:
            logger.scalars("eval", eval_curves(result, separate), tc.steps)
        save(tc.steps)
        result["run_dir"] = str(run_path)
        write_report(run_path / f"metrics.rank{rank}.json", {**result, "curve": curve})
    logger.close()
    transport.close()
    dist.destroy_process_group()
    return result
