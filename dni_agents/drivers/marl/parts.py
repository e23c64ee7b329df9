"""What a multi-agent config is built into and what playing records: a :class:`Group` (one network, a core
agent, and the environment agents it controls), a :class:`Channel` (a message's way from one group to
another, with its core interface and channel model), and an :class:`Episode`. Imported by every part of
the driver; imports none of them."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from gymnasium import spaces

from ...core import Agent, ChannelModel, Interface
from .policy import PolicyNet


@dataclass
class Group:
    """One network (core agent) and the environment agents it controls."""

    name: str
    members: list[str]
    agent: Agent
    net: PolicyNet
    policy: bool
    period: int
    action_space: spaces.Space
    obs_dim: int
    inbound: list[Channel] = field(default_factory=list)
    outbound: list[Channel] = field(default_factory=list)


@dataclass
class Channel:
    name: str
    sender: str
    receiver: str
    mode: str
    size: int
    obs_slice: tuple[int, int] | None  # None: appended to the receiver's observation
    interface: Interface | None  # None for rial (the environment carries the message)
    model: ChannelModel = field(default_factory=ChannelModel)  # noise, discretisation, delay


@dataclass
class Episode:
    """One synchronous episode of every environment copy (time-major, ``T`` steps at most)."""

    obs: dict[str, torch.Tensor]  # group -> (T, E, n, obs_dim)
    actions: dict[str, torch.Tensor]  # group -> (T, E, n) or (T, E, n, A)
    logp: dict[str, torch.Tensor]
    values: dict[str, torch.Tensor]
    rewards: dict[str, torch.Tensor]  # group -> (T, E, n)
    alive: torch.Tensor  # (T, E): the copy was still running at step t
    sources: dict[str, torch.Tensor]  # channel -> (T, E, n_receivers): sender member heard at t (-1: none)
    messages: dict[str, torch.Tensor]  # channel -> (T, E, n_senders, size), as sent
    private: torch.Tensor | None  # (T, E, n_senders) private info of the private_info agent
    steps: int  # environment steps played (alive copies only)
    noise: dict[str, torch.Tensor] = field(default_factory=dict)  # noisy channel -> ε of each message sent
    heard: dict[str, torch.Tensor] = field(default_factory=dict)  # channel -> (T, E, n_receivers, size)
    probs: dict[str, torch.Tensor] = field(default_factory=dict)  # discrete group -> (T, E, n, actions)
    memory: dict[str, torch.Tensor] = field(default_factory=dict)  # recurrent group -> actor state before t
    outage: dict[str, torch.Tensor] = field(default_factory=dict)  # channel -> (E,) 1: up this episode

    @property
    def length(self) -> int:
        return self.alive.shape[0]

    def decisions(self, period: int) -> list[int]:
        """The steps at which a network of this ``period`` acts (all copies start together)."""
        return list(range(0, self.length, period))
