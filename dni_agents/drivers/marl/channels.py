"""Channels of the multi-agent driver: when a message is heard and what the channel does to it.

* ``delay`` 0: the receiver hears a message in the step it is sent, so senders act before their receivers
  (:func:`speaking_order`); ``delay`` 1 (default, as mpe2's own communication): the next step, the first
  step is silent.
* Noise and discretisation are the core's :class:`~dni_agents.core.ChannelModel`; the rollout draws the
  noise and keeps it, so the learner's replay hears exactly what was heard while playing
  (:func:`transmitted`).
* Routing (:func:`route`): which sender member each receiving member hears, as a gather, so gradients flow
  back to exactly the message that was heard.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ...config import Config, ConfigError, interface_config
from ...core import ChannelModel

if TYPE_CHECKING:
    from .parts import Channel, Episode, Group

def channel_model(cfg: Config, sender: str, receiver: str) -> ChannelModel:
    c = interface_config(cfg, sender, receiver).channel
    return ChannelModel(noise=c.noise, discretize=c.discretize, levels=c.levels, delay=c.delay,
                        outage=c.outage)


def speaking_order(groups: list[Group], channels: list[Channel]) -> list[Group]:
    """The groups in an order in which every sender on a ``delay: 0`` channel acts before its receiver."""
    after = {g.name: {c.sender for c in channels if c.receiver == g.name and c.model.delay == 0
                      and c.interface is not None} for g in groups}
    order, placed = [], set()
    while len(order) < len(groups):
        ready = [g for g in groups if g.name not in placed and after[g.name] <= placed]
        if not ready:
            loop = sorted(g.name for g in groups if g.name not in placed)
            raise ConfigError(f"interfaces: the delay-0 channels among {', '.join(loop)} form a loop: each "
                              "would hear the other in the same step (set channel.delay: 1 on one of them)")
        order.append(ready[0])
        placed.add(ready[0].name)
    return order


def route(
    messages: torch.Tensor | None, sources: torch.Tensor, size: int, batch: int,
    device: torch.device | None = None,
) -> torch.Tensor:
    """What each receiving member hears: the message of the sender member ``sources`` names (-1: silence).
    A gather, so gradients flow back to exactly the message that was heard."""
    if messages is None:
        return torch.zeros(batch, sources.shape[1], size, device=device)
    padded = torch.cat([messages, messages.new_zeros(messages.shape[0], 1, size)], 1)
    index = torch.where(sources < 0, messages.shape[1], sources).to(messages.device)
    return padded.gather(1, index.unsqueeze(-1).expand(-1, -1, size))


def hear(
    c: Channel, sent: torch.Tensor | None, noise: torch.Tensor | None, sources: torch.Tensor, batch: int,
    training: bool, ablate: str | None = None, perm: torch.Tensor | None = None,
    device: torch.device | None = None, up: torch.Tensor | None = None,
) -> torch.Tensor:
    """What the receiving members of channel ``c`` hear of the messages ``sent`` (copies, senders, size):
    through the channel (noise in training, discrete values at evaluation, silence in the copies where
    ``up`` is 0), then routed."""
    if sent is not None:
        sent = c.model.transmit(sent, noise, training, up)
        if ablate == "zero":
            sent = torch.zeros_like(sent)
        elif ablate == "permute":
            sent = sent[perm]
    return route(sent, sources, c.size, batch, device)


def transmitted(c: Channel, ep: Episode, t: int | slice, mb: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """What the receivers of ``c`` heard of the messages ``h`` (B, senders, size) sent at step ``t`` in the
    copies ``mb`` of episode ``ep``, or of a stack of them (S, B, senders, size) sent at the steps of the
    slice ``t``: through the noise the rollout drew, silent where its channel was down."""
    noise = ep.noise[c.name][t, mb] if c.name in ep.noise else None
    up = ep.outage[c.name][mb] if c.name in ep.outage else None
    if isinstance(t, slice):  # the channel's rows are the messages: one per (step, copy)
        up = None if up is None else up.repeat(len(h))
        return c.model.transmit(h.flatten(0, 1), None if noise is None else noise.flatten(0, 1),
                                up=up).view_as(h)
    return c.model.transmit(h, noise, up=up)
