"""The learner's replay: the episode again, with gradients, every message crossing its channel's core
interface. Networks whose whole episode is known in advance go in one batched pass; the rest step in time."""

from __future__ import annotations

import torch

from ...core import Tick
from ...core.distributed import TorchDistributed
from .channels import route, transmitted
from .gates import Sensitivity, sender_context
from .parts import Channel, Episode, Group
from .rollout import Player


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
    groups: list[Group], player: Player, ep: Episode, mb: torch.Tensor, ticks: dict[str, Tick], base: int,
    sensitivity: Sensitivity, transport: TorchDistributed | None = None, batched: tuple[str, ...] = (),
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

    def heard_stack(c: Channel, tick: Tick) -> torch.Tensor:
        """What the receivers of a batched channel heard at every step, from its one message."""
        if c.name not in heard_all:
            sent = T - c.model.delay
            if sent <= 0:  # the episode ends before anything sent arrives: silence throughout
                heard_all[c.name] = torch.zeros(T, B, len(player.by_name[c.receiver].members), c.size,
                                                device=player.device)
                return heard_all[c.name]
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
                                         len(g.members), out.detach(), sensitivity)
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
                                             out.detach(), sensitivity)
                tick.send(c.interface, out.view_as(h), context, step=base + t, weight=weights.get(c.name))
    features_out.update({name: torch.stack(f) for name, f in features_by_step.items()})
    return features_out
