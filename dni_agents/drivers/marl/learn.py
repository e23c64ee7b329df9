"""Learning: GAE, and PPO over the replayed episode, every channel a core interface (the sender gets ĝ now,
the true gradient as a graph edge, or nothing, as its mode says)."""

from __future__ import annotations

from contextlib import ExitStack
from typing import Any

import torch

from ...config import Config
from ...core import System
from ...core.distributed import TorchDistributed
from .build import Channel, Group
from .comm import (
    Sensitivity,
    normalized_advantages,
    route,
    sender_context,
    sensitivities,
    transmitted,
)
from .rollout import Episode, Player


def advantages(ep: Episode, g: Group, gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE over the network's decision steps (every ``period`` env steps; rewards in between are summed)."""
    k = g.period
    decisions = ep.decisions(k)
    rewards = ep.rewards[g.name] * ep.alive[..., None]
    values = ep.values[g.name][decisions]
    alive = ep.alive[decisions].float()[..., None]
    block = torch.stack([rewards[d: d + k].sum(0) for d in decisions])
    adv = torch.zeros_like(block)
    last = torch.zeros_like(block[0])
    for i in reversed(range(len(decisions))):
        next_alive = alive[i + 1] if i + 1 < len(decisions) else torch.zeros_like(alive[0])
        next_value = values[i + 1] if i + 1 < len(decisions) else torch.zeros_like(values[0])
        delta = block[i] + gamma**k * next_value * next_alive - values[i]
        last = delta + gamma**k * lam * next_alive * last
        adv[i] = last
    return adv * alive, (adv + values) * alive


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
    mine = [g for g in groups if g.name in system.agents]
    for g in mine:
        if g.policy:
            g.net.observe_returns(gae[g.name][1][ep.alive[ep.decisions(g.period)]])
    E = ep.alive.shape[1]
    stats: dict[str, dict[str, list[float]]] = {g.name: {} for g in mine if g.policy}
    # In one process every network updates in one tick: one backward pass for all (``batched_replay``);
    # otherwise networks joined by backprop channels share a tick, the others have their own
    ticking = [list(system.agents)] if mc.batched_replay and transport is None else system.coupled()
    batched = batched_groups(groups) if mc.batched_replay else ()
    gated = any(c.mode == "cdni" for g in mine for c in g.outbound)  # a gate is made where it is sent
    for epoch in range(mc.epochs):
        system.track_stats = track and epoch == 0
        order = torch.randperm(E, generator=generator)
        for mb in order.chunk(min(mc.minibatches, E)):
            sens = (sensitivities(cfg, groups, player.order, ep, mb, gae) if gated  # the cDNI gates
                    else Sensitivity({}))
            clock += 1
            base = clock * block_steps(cfg)  # one block of clock steps per minibatch
            with ExitStack() as stack:
                ticks = {}
                for members in ticking:
                    t_ = stack.enter_context(system.tick(members, clock))
                    ticks.update(dict.fromkeys(members, t_))
                out = replay(groups, player, ep, mb, ticks, base, sens, transport, batched)
                for g in mine:
                    if g.policy:
                        loss, parts = ppo_loss(mc, g, ep, mb, out[g.name], gae[g.name])
                        ticks[g.name].add_loss(loss)
                        for k, v in parts.items():
                            stats[g.name].setdefault(k, []).append(v)
            if transport is not None:
                settle_block(system, transport, mine, ep, base, block_steps(cfg), batched)
            system.check_settled()
    system.track_stats = False
    return {g: {k: sum(v) / len(v) for k, v in s.items()} for g, s in stats.items()}, clock


def block_steps(cfg: Config) -> int:
    """Clock steps a minibatch spans: one per step of the longest episode and one to spare, so that the
    steps of minibatch k are ``[k·b, (k + 1)·b)`` whatever length each episode has."""
    return cfg.marl.max_steps + 1


def settle_block(
    system: System, transport: TorchDistributed, mine: list[Group], ep: Episode, base: int, block: int,
    batched: tuple[str, ...] = (),
) -> None:
    """After a minibatch on several processes: a sender on a locked channel (``backprop``) waits for the
    true gradients of every message it sent and updates; then the staleness window (in minibatches:
    ``distributed.max_staleness`` N) waits for the targets of minibatches up to N back, and the utility
    models learn from what has come. With N = 0 this is the order of the in-process minibatch, so the next
    one's ĝ is predicted by the same utility model."""
    T = ep.length
    for g in mine:
        for c in g.outbound:
            if c.interface is not None and c.interface.locked and transport.is_remote(c.name):
                for t in range(1 if g.name in batched else T - c.model.delay):  # batched: one message
                    transport.wait_target(c.name, base + t)
    system.settle()
    transport.throttle(base + block)  # the next block's first step: every target the window asks for
    system.settle()


def batched_groups(groups: list[Group]) -> tuple[str, ...]:
    """The networks whose whole episode the replay computes in one pass, senders before their receivers:
    those without memory that hear only channels whose messages are known in advance (their senders are
    batched too, so there is no loop, not even through a delay: no message depends on its receiver)."""
    batched: list[str] = []
    grew = True
    while grew:
        grew = False
        for g in groups:
            senders = {c.sender for c in g.inbound if c.interface is not None}
            if g.name not in batched and g.net.rnn_free and senders <= set(batched):
                batched.append(g.name)
                grew = True
    return tuple(batched)


def replay(
    groups: list[Group], player: Player, ep: Episode, mb: torch.Tensor, ticks: dict, base: int,
    sens: Sensitivity, transport: TorchDistributed | None = None, batched: tuple[str, ...] = (),
) -> dict[str, torch.Tensor]:
    """The episode again, with gradients: the message of step t goes out through the interface as the
    message of clock step ``base + t`` and is heard at ``t + delay`` through the noise the rollout drew.
    Returns each acting network's features per decision, (decisions, copies × members, features), of the
    networks in ``ticks`` (this rank's; a ``transport``'s messages from other ranks are waited for).

    The ``batched`` networks (:func:`batched_groups`: senders before their receivers) go first, each in
    one forward pass over all its decisions; each of their channels carries the whole
    episode as one message (``stacked``: learned as its steps' messages would be). The others step in time."""
    T, B = ep.length, len(mb)
    features_out: dict[str, torch.Tensor] = {}
    heard_all: dict[str, torch.Tensor] = {}  # a batched channel -> (T, B, receivers, size) as heard
    # a message its channel did not carry (an outage) says nothing of what a heard one is worth: weight 0
    # in its utility model's regression; one row per sender member, the same at every step of the episode
    weights = {c.name: ep.outage[c.name][mb].repeat_interleave(len(g.members))
               for g in groups for c in g.outbound if c.name in ep.outage}

    def heard_stack(c: Channel, tick: Any) -> torch.Tensor:
        """What the receivers of a batched channel heard at every step, from its one message."""
        if c.name not in heard_all:
            sent = T - c.model.delay
            if transport is not None:
                transport.wait_message(c.name, base)
            z = tick.receive(c.interface, step=base).view(sent * B, -1, c.size)
            sources = ep.sources[c.name][c.model.delay:, mb].flatten(0, 1)
            heard = route(z, sources, c.size, sent * B, player.device).view(sent, B, -1, c.size)
            silent = heard.new_zeros(c.model.delay, *heard.shape[1:])  # before the first message arrives
            heard_all[c.name] = torch.cat([silent, heard]) if c.model.delay else heard
        return heard_all[c.name]

    # 1. whole episodes at once
    for g in (player.by_name[name] for name in batched if name in ticks):
        tick, steps = ticks[g.name], torch.tensor(ep.decisions(g.period))
        inbound = {c.name: heard_stack(c, tick)[steps] for c in g.inbound if c.interface is not None}
        x = player.inputs(g, ep.obs[g.name][steps][:, mb], inbound, steps)
        features = g.net(x.flatten(0, 2), None)[0]
        features_out[g.name] = features.view(len(steps), -1, features.shape[-1])
        for c in g.outbound:
            sent = T - c.model.delay  # a message nobody will hear is not sent
            if c.interface is None or sent <= 0:
                continue
            h = g.net.message(c.name, features).view(len(steps), B, -1, c.size)
            h = h[torch.arange(sent) // g.period]  # held between decisions
            out = transmitted(c, ep, slice(0, sent), mb, h)  # the channel is the sender's (see below)
            context = None
            if c.mode == "cdni":
                context = sender_context(c, player.by_name[c.receiver], ep, torch.arange(sent), mb,
                                         len(g.members), out.detach(), sens)
            weight = weights[c.name].repeat(sent) if c.name in weights else None
            tick.send(c.interface, out.flatten(0, 2), context, step=base, weight=weight, stacked=sent)

    # 2. the rest, step by step
    stepwise = [g for g in player.order if g.name in ticks and g.name not in batched]
    hidden: dict[str, torch.Tensor | None] = {g.name: None for g in stepwise}
    held: dict[str, dict[str, torch.Tensor]] = {g.name: {} for g in stepwise}
    features_by_step: dict[str, list[torch.Tensor]] = {g.name: [] for g in stepwise}
    for t in range(T) if stepwise else ():
        for g in stepwise:
            tick = ticks[g.name]
            inbound = {}
            for c in g.inbound:
                if c.interface is None:
                    continue
                if c.sender in batched:
                    inbound[c.name] = heard_stack(c, tick)[t]
                    continue
                sent_at = t - c.model.delay
                heard = None
                if sent_at >= 0:  # the message as heard: the sender put it through the channel
                    if transport is not None:
                        transport.wait_message(c.name, base + sent_at)
                    heard = tick.receive(c.interface, step=base + sent_at).view(B, -1, c.size)
                inbound[c.name] = route(heard, ep.sources[c.name][t, mb], c.size, B, player.device)
            if t % g.period == 0:
                x = player.inputs(g, ep.obs[g.name][t, mb], inbound, t)
                features, hidden[g.name] = g.net(x.flatten(0, 1), hidden[g.name])
                features_by_step[g.name].append(features)
                held[g.name] = {c.name: g.net.message(c.name, features)
                                for c in g.outbound if c.interface is not None}
            for c in g.outbound:
                if c.interface is None or t + c.model.delay >= T:
                    continue  # a message nobody will hear is not sent
                # The channel (noise, squash) is on the sender's side of the interface: what crosses is
                # what the receiver hears, so ĝ is the receiver's gradient for it and the sender's own
                # backward applies the channel's derivative exactly (a saturated symbol gets none, as
                # with backprop; a utility model left to learn that factor let the messages drift).
                h = held[g.name][c.name]
                out = transmitted(c, ep, t, mb, h.view(B, -1, c.size))
                context = None
                if c.mode == "cdni":
                    context = sender_context(c, player.by_name[c.receiver], ep, t, mb, len(g.members),
                                             out.detach(), sens)
                tick.send(c.interface, out.view_as(h), context, step=base + t, weight=weights.get(c.name))
    features_out.update({name: torch.stack(f) for name, f in features_by_step.items()})
    return features_out


def ppo_loss(mc: Any, g: Group, ep: Episode, mb: torch.Tensor, features: torch.Tensor | list[torch.Tensor],
             gae: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped PPO objective + value loss − entropy bonus over the decisions of live copies."""
    adv, returns = gae
    decisions = ep.decisions(g.period)
    feats = features if isinstance(features, torch.Tensor) else torch.stack(features)  # (D, B*n, H)
    D, B, n = len(decisions), len(mb), len(g.members)
    mask = ep.alive[decisions][:, mb].float().unsqueeze(-1).expand(D, B, n).reshape(D, B * n)
    dist = g.net.dist(feats)
    action = ep.actions[g.name][decisions][:, mb].reshape(D, B * n, *ep.actions[g.name].shape[3:])
    logp = dist.log_prob(action)
    entropy = dist.entropy()
    if not g.net.discrete:
        logp, entropy = logp.sum(-1), entropy.sum(-1)
    old = ep.logp[g.name][decisions][:, mb].reshape(D, B * n)
    count = mask.sum().clamp_min(1)
    a = normalized_advantages(adv[:, mb].reshape(D, B * n), mask)
    ratio = (logp - old).exp()
    pg = torch.max(-a * ratio, -a * ratio.clamp(1 - mc.clip, 1 + mc.clip))
    value = g.net.normalized_value(feats)
    target = (returns[:, mb].reshape(D, B * n) - g.net.return_mean) / g.net.return_var.sqrt()
    v_loss = 0.5 * (value - target) ** 2
    pg_loss, v_loss, ent = ((x * mask).sum() / count for x in (pg, v_loss, entropy))
    loss = pg_loss + mc.vf_coef * v_loss - mc.ent_coef * ent
    with torch.no_grad():
        kl = (((ratio - 1) - (logp - old)) * mask).sum() / count
    return loss, {"policy_loss": pg_loss.item(), "value_loss": v_loss.item(), "entropy": ent.item(),
                  "approx_kl": float(kl)}
