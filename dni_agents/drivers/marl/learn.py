"""Learning, as CleanRL's ppo.py reads: per update, GAE over the played episode, then PPO epochs over
minibatches of environment copies. Each minibatch is one tick of every network: the replay sends every
message through its channel's core interface (the sender gets ĝ now, the true gradient as a graph edge, or
nothing, as the mode says) and returns the features each policy's loss is computed on; the tick's end is
the backward pass and the optimizer steps; the utility models learn from the targets that came back.

The pieces: :mod:`.ppo` (GAE, the clipped objective), :mod:`.replay` (the episode again, with gradients),
:mod:`.gates` (what a cDNI utility model sees), :mod:`.channels` (delays, noise, routing)."""

from __future__ import annotations

from contextlib import ExitStack

import torch

from ...config import Config
from ...core import System
from ...core.distributed import TorchDistributed
from .gates import Sensitivity, sensitivities
from .parts import Episode, Group
from .ppo import advantages, ppo_loss
from .replay import batched_groups, replay
from .rollout import Player


def ppo_update(
    cfg: Config, system: System, groups: list[Group], player: Player,
    ep: Episode, generator: torch.Generator, clock: int, track: bool = False,
    transport: TorchDistributed | None = None,
) -> tuple[dict[str, dict[str, float]], int]:
    """PPO epochs over minibatches of environment copies; each minibatch is one tick of every network,
    replaying the episode so that messages cross the channels' interfaces with gradients. ``track``:
    measure ĝ's fidelity in the first epoch (held out: no utility model has seen this episode's targets).

    On several processes (``transport``; ``system`` holds this rank's networks) every rank has the whole
    episode and runs the same epochs and minibatches, ticking only its own networks; a minibatch is one
    block of clock steps on the wire (:func:`settle_block`)."""
    mc = cfg.marl
    gae = {g.name: advantages(ep, g, mc.gamma, mc.gae_lambda) for g in groups if g.policy}
    local = [g for g in groups if g.name in system.agents]
    for g in local:
        if g.policy:
            g.net.observe_returns(gae[g.name][1][ep.alive[ep.decisions(g.period)]])
    E = ep.alive.shape[1]
    stats: dict[str, dict[str, list[float]]] = {g.name: {} for g in local if g.policy}
    # In one process every network updates in one tick: one backward pass for all (``batched_replay``);
    # otherwise networks joined by backprop channels share a tick, the others have their own
    ticking = [list(system.agents)] if mc.batched_replay and transport is None else system.coupled()
    batched = batched_groups(groups) if mc.batched_replay else ()
    gated = any(c.mode == "cdni" for g in local for c in g.outbound)  # a gate is made where it is sent
    for epoch in range(mc.epochs):
        system.track_stats = track and epoch == 0
        order = torch.randperm(E, generator=generator)
        for mb in order.chunk(min(mc.minibatches, E)):
            sensitivity = (sensitivities(cfg, groups, player.order, ep, mb, gae) if gated  # the cDNI gates
                    else Sensitivity({}))
            clock += 1
            base = clock * block_steps(cfg)  # one block of clock steps per minibatch
            with ExitStack() as stack:
                ticks = {}
                for members in ticking:
                    t_ = stack.enter_context(system.tick(members, clock))
                    ticks.update(dict.fromkeys(members, t_))
                out = replay(groups, player, ep, mb, ticks, base, sensitivity, transport, batched)
                for g in local:
                    if g.policy:
                        loss, parts = ppo_loss(mc, g, ep, mb, out[g.name], gae[g.name])
                        ticks[g.name].add_loss(loss)
                        for k, v in parts.items():
                            stats[g.name].setdefault(k, []).append(v)
            if transport is not None:
                settle_block(system, transport, local, ep, base, block_steps(cfg), batched)
            system.check_settled()
    system.track_stats = False
    return {g: {k: sum(v) / len(v) for k, v in s.items()} for g, s in stats.items()}, clock


def block_steps(cfg: Config) -> int:
    """Clock steps a minibatch spans: one per step of the longest episode and one to spare, so that the
    steps of minibatch k are ``[k·b, (k + 1)·b)`` whatever length each episode has."""
    return cfg.marl.max_steps + 1


def settle_block(
    system: System, transport: TorchDistributed, local: list[Group], ep: Episode, base: int, block: int,
    batched: tuple[str, ...] = (),
) -> None:
    """After a minibatch on several processes: a sender on a locked channel (``backprop``) waits for the
    true gradients of every message it sent and updates; then the staleness window (in minibatches:
    ``distributed.max_staleness`` N) waits for the targets of minibatches up to N back, and the utility
    models learn from what has come. With N = 0 this is the order of the in-process minibatch, so the next
    one's ĝ is predicted by the same utility model."""
    T = ep.length
    for g in local:
        for c in g.outbound:
            if c.interface is not None and c.interface.locked and transport.is_remote(c.name):
                for t in range(1 if g.name in batched else T - c.model.delay):  # batched: one message
                    transport.wait_target(c.name, base + t)
    system.settle()
    transport.throttle(base + block)  # the next block's first step: every target the window asks for
    system.settle()
