"""Learning: GAE, and PPO over the replayed episode, every channel a core interface (the sender gets ĝ now,
the true gradient as a graph edge, or nothing, as its mode says)."""

from __future__ import annotations

from contextlib import ExitStack
from typing import Any

import torch

from ...config import Config
from ...core import System
from ...core.distributed import TorchDistributed
from .build import Group
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
    ticking = system.coupled()  # networks joined by backprop channels update in one tick
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
                out = replay(groups, player, ep, mb, ticks, base, sens, transport)
                for g in mine:
                    if g.policy:
                        loss, parts = ppo_loss(mc, g, ep, mb, out[g.name], gae[g.name])
                        ticks[g.name].add_loss(loss)
                        for k, v in parts.items():
                            stats[g.name].setdefault(k, []).append(v)
            if transport is not None:
                settle_block(system, transport, mine, ep, base, block_steps(cfg))
            system.check_settled()
    system.track_stats = False
    return {g: {k: sum(v) / len(v) for k, v in s.items()} for g, s in stats.items()}, clock


def block_steps(cfg: Config) -> int:
    """Clock steps a minibatch spans: one per step of the longest episode and one to spare, so that the
    steps of minibatch k are ``[k·b, (k + 1)·b)`` whatever length each episode has."""
    return cfg.marl.max_steps + 1


def settle_block(
    system: System, transport: TorchDistributed, mine: list[Group], ep: Episode, base: int, block: int,
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
                for t in range(T - c.model.delay):
                    transport.wait_target(c.name, base + t)
    system.settle()
    transport.throttle(base + block)  # the next block's first step: every target the window asks for
    system.settle()


def replay(
    groups: list[Group], player: Player, ep: Episode, mb: torch.Tensor, ticks: dict, base: int,
    sens: Sensitivity, transport: TorchDistributed | None = None,
) -> dict[str, list[torch.Tensor]]:
    """The episode again, with gradients: the message of step t goes out through the interface as the
    message of clock step ``base + t`` and is heard at ``t + delay`` through the noise the rollout drew.
    Returns each acting network's features per decision (of the networks in ``ticks``: this rank's; a
    ``transport``'s messages from other ranks are waited for)."""
    T, B = ep.length, len(mb)
    hidden: dict[str, torch.Tensor | None] = {g.name: None for g in groups}
    held: dict[str, dict[str, torch.Tensor]] = {g.name: {} for g in groups}
    features_out: dict[str, list[torch.Tensor]] = {g.name: [] for g in groups}
    # A network that hears no channel and has no memory does not depend on the step order: one batched
    # forward over all its decisions, sliced per step below (the same computation in fewer calls).
    batched: dict[str, list[torch.Tensor]] = {}
    # a message its channel did not carry (an outage) says nothing of what a heard one is worth: weight 0
    # in its utility model's regression; one row per sender member, the same at every step of the episode
    weights = {c.name: ep.outage[c.name][mb].repeat_interleave(len(g.members))
               for g in groups for c in g.outbound if c.name in ep.outage}
    for g in groups:
        if g.name in ticks and g.net.rnn_free and not any(c.interface is not None for c in g.inbound):
            steps = ep.decisions(g.period)
            x = torch.stack([player.inputs(g, ep.obs[g.name][t, mb], {}, t) for t in steps])
            features = g.net(x.flatten(0, 2), None)[0]
            batched[g.name] = list(features.view(len(steps), -1, features.shape[-1]).unbind(0))
    for t in range(T):
        for g in player.order:
            if g.name not in ticks:
                continue  # another rank's network
            tick = ticks[g.name]
            inbound = {}
            for c in g.inbound:
                if c.interface is None:
                    continue
                sent_at = t - c.model.delay
                heard = None
                if sent_at >= 0:  # the message as heard: the sender put it through the channel
                    if transport is not None:
                        transport.wait_message(c.name, base + sent_at)
                    heard = tick.receive(c.interface, step=base + sent_at).view(B, -1, c.size)
                inbound[c.name] = route(heard, ep.sources[c.name][t, mb], c.size, B, player.device)
            if t % g.period == 0:
                if g.name in batched:
                    features = batched[g.name][t // g.period]
                else:
                    x = player.inputs(g, ep.obs[g.name][t, mb], inbound, t)
                    features, hidden[g.name] = g.net(x.flatten(0, 1), hidden[g.name])
                features_out[g.name].append(features)
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
                out = transmitted(c, ep, t, mb, h.view(B, -1, c.size)).view_as(h)
                context = None
                if c.mode == "cdni":
                    context = sender_context(c, player.by_name[c.receiver], ep, t, mb, len(g.members),
                                             out.detach().view(B, -1, c.size), sens)
                tick.send(c.interface, out, context, step=base + t, weight=weights.get(c.name))
    return features_out


def ppo_loss(mc: Any, g: Group, ep: Episode, mb: torch.Tensor, features: list[torch.Tensor],
             gae: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped PPO objective + value loss − entropy bonus over the decisions of live copies."""
    adv, returns = gae
    decisions = ep.decisions(g.period)
    feats = torch.stack(features)  # (D, B*n, H)
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
