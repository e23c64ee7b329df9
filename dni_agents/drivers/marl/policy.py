"""The network of one multi-agent agent: actor and critic bodies, a GRU memory, one message head per channel.

This file holds the model and nothing of training (nanoGPT's split): ``rollout.py`` plays and ``learn.py``
learns with it through the methods below. What the driver asks of a policy:

* ``forward(x, h) -> (features, h)``: features ``[actor | critic]`` of a batch of inputs, and the new memory;
* ``message(channel, features)``: the message on each outbound channel (``head(channel)`` its linear map);
* ``dist(features)``: the action distribution (``Categorical`` or ``Normal``); ``value(features)`` the critic;
* ``discrete``, ``recurrent``, ``rnn_free``, ``hidden`` (the width of the actor's memory), ``candidates``.

A user brings their own network through ``agents[i].network: package.module:Factory`` (with
``network_kwargs``): ``Factory(in_dim, hidden, **network_kwargs)`` builds a module that maps inputs of shape
``(..., in_dim)`` to features ``(..., hidden)`` (a candidate scorer feeds it one row per candidate). It is
called once for the actor's body and once for the critic's; heads, memory, value normalisation and message
heads stay this class's, so every channel mode, the cDNI context and the controls work unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from gymnasium import spaces
from torch import nn

from ...config import ConfigError, import_object
from ...runtime.run import intra_op_threads

Body = Callable[[int, int], nn.Module]  # (in_dim, hidden) -> a module from (rows, in_dim) to (rows, hidden)


def user_body(spec: str, kwargs: dict, key: str) -> Body:
    """The body factory an import string names, checked where it is used: it must build an ``nn.Module``
    that maps ``(rows, in_dim)`` inputs to ``(rows, hidden)`` features."""
    factory = import_object(spec, key)
    if not callable(factory):
        raise ConfigError(f"{key}: {spec!r} is not callable")

    def body(in_dim: int, hidden: int) -> nn.Module:
        try:
            module = factory(in_dim, hidden, **kwargs)
        except TypeError as exc:
            raise ConfigError(f"{key}: {spec}({in_dim}, {hidden}, **{kwargs}) fails ({exc})") from None
        if not isinstance(module, nn.Module):
            raise ConfigError(f"{key}: {spec} must build a torch.nn.Module, got {type(module).__name__}")
        with torch.no_grad():
            out = module(torch.zeros(2, in_dim))
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, hidden):
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ConfigError(f"{key}: {spec} maps inputs (2, {in_dim}) to {got}; features must be "
                              f"(2, {hidden}): (rows, marl.hidden)")
        return module

    return body


class PolicyNet(nn.Module):
    """Actor and critic networks (MLP, or MLP + GRU), one message head per outbound channel.

    * Message heads start small and random (``message_gain``; 0 = silent). A synthetic gradient that sees
      only the message cannot pull apart messages that coincide: from silent heads, the utility model's
      first, message-independent output moved every goal's message along one line, and DNI runs kept
      two goals merged. Under channel noise a faint random code is not decoded (``none`` stays
      uninformed there).
    * The critic reads the messages detached: a message learns from what the receiver *does* with it (the
      policy loss), not from the receiver's value regression, whose offset would drag every message the
      same way. Value targets are normalised by running statistics (buffers, so they are checkpointed).
    * ``candidates = (n, f)``: the first ``n·f`` inputs are ``n`` candidates and action ``i`` picks candidate
      ``i``; the actor scores each candidate (with the rest of the input) by one shared network, so it is
      permutation-equivariant instead of having to learn the same comparison ``n`` times.
    """

    def __init__(
        self, in_dim: int, hidden: int, recurrent: bool, action_space: spaces.Space | None,
        message_sizes: dict[str, int], candidates: tuple[int, int] | None = None, squash: bool = True,
        message_gain: float = 0.1, raw_channels: tuple[str, ...] = (), body: Body | None = None,
    ) -> None:
        super().__init__()
        self.hidden, self.recurrent, self.candidates, self.squash = hidden, recurrent, candidates, squash
        self.raw = {_key(k) for k in raw_channels}  # discretised channels squash the message themselves
        self.actor_width = hidden * (candidates[0] if candidates else 1)
        scored_dim = in_dim - candidates[0] * candidates[1] + candidates[1] if candidates else in_dim
        body = body or mlp_body
        self.actor_body = body(scored_dim, hidden)
        self.actor_rnn = nn.GRUCell(hidden, hidden) if recurrent else None
        self.rnn_free = not recurrent
        self.discrete = isinstance(action_space, spaces.Discrete)
        self.acts = action_space is not None
        if self.acts:
            n_out = int(action_space.n) if self.discrete else int(np.prod(action_space.shape))
            self.actor = _ortho(nn.Linear(hidden, 1 if candidates else n_out), 0.01)
            if not self.discrete:
                self.log_std = nn.Parameter(torch.full((n_out,), -0.5))
            self.critic_body = body(in_dim, hidden)
            self.critic_rnn = nn.GRUCell(hidden, hidden) if recurrent else None
            self.critic = _ortho(nn.Linear(hidden, 1), 1.0)
            self.register_buffer("return_mean", torch.zeros(()))
            self.register_buffer("return_var", torch.ones(()))
            self.register_buffer("return_count", torch.zeros(()))
        self.messages = nn.ModuleDict({_key(k): nn.Linear(hidden, n) for k, n in message_sizes.items()})
        for head in self.messages.values():
            _ortho(head, message_gain)

    def forward(self, x: torch.Tensor, h: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Features ``[actor | critic]`` (the critic part only if the network acts) and the new GRU state."""
        ha = hc = None
        if h is not None:
            ha, hc = h[:, : self.hidden], h[:, self.hidden:]
        if self.candidates:
            n, f = self.candidates
            cands = x[:, : n * f].reshape(-1, n, f)
            rest = x[:, n * f:].unsqueeze(1).expand(-1, n, -1)
            fa = self.actor_body(torch.cat([cands, rest], -1)).flatten(1)
        else:
            fa = self.actor_body(x)
        if self.actor_rnn is not None:
            fa = ha = self.actor_rnn(fa, ha)
        if not self.acts:
            return fa, ha
        fc = self.critic_body(x.detach())
        if self.critic_rnn is not None:
            fc = hc = self.critic_rnn(fc, hc)
        return torch.cat([fa, fc], -1), (torch.cat([ha, hc], -1) if self.recurrent else None)

    def message(self, channel: str, features: torch.Tensor, squash: bool = True) -> torch.Tensor:
        """The message on ``channel``; ``squash=False``: before the tanh (the frozen control's scale)."""
        fa = features[:, : self.actor_width]
        if self.candidates:
            fa = fa.reshape(len(fa), -1, self.hidden).mean(1)
        message = self.messages[_key(channel)](fa)
        squash = squash and self.squash and _key(channel) not in self.raw
        return torch.tanh(message) if squash else message

    def head(self, channel: str) -> nn.Linear:
        return self.messages[_key(channel)]

    def dist(self, features: torch.Tensor) -> torch.distributions.Distribution:
        fa = features[..., : self.actor_width]
        if self.candidates:
            out = self.actor(fa.reshape(*fa.shape[:-1], -1, self.hidden)).squeeze(-1)
        else:
            out = self.actor(fa)
        # the arguments are ours and valid by construction: no per-call check (a few % of a PPO epoch)
        if self.discrete:
            return torch.distributions.Categorical(logits=out, validate_args=False)
        return torch.distributions.Normal(out, self.log_std.exp().expand_as(out), validate_args=False)

    def value(self, features: torch.Tensor) -> torch.Tensor:
        """The critic's estimate in return units."""
        return self.normalized_value(features) * self.return_var.sqrt() + self.return_mean

    def normalized_value(self, features: torch.Tensor) -> torch.Tensor:
        return self.critic(features[..., self.actor_width:]).squeeze(-1)

    @torch.no_grad()
    def observe_returns(self, returns: torch.Tensor) -> None:
        _merge_moments(self.return_mean, self.return_var, self.return_count, returns.reshape(-1))
        self.return_var.clamp_(min=1e-4)


def _merge_moments(mean: torch.Tensor, var: torch.Tensor, count: torch.Tensor, batch: torch.Tensor) -> None:
    """Merge a batch (rows) into running mean / variance / count in place (parallel Welford)."""
    n = batch.shape[0]
    b_mean, b_var = batch.mean(0), batch.var(0, unbiased=False)
    total = count + n
    delta = b_mean - mean
    m2 = var * count + b_var * n + delta**2 * count * n / total
    mean += delta * n / total
    var.copy_(m2 / total)
    count.copy_(total)


def mlp_body(in_dim: int, hidden: int) -> nn.Sequential:
    """The default body: two tanh layers, orthogonal init (CleanRL's PPO)."""
    gain = math.sqrt(2)
    return nn.Sequential(
        _ortho(nn.Linear(in_dim, hidden), gain), nn.Tanh(), _ortho(nn.Linear(hidden, hidden), gain), nn.Tanh()
    )


def _ortho(layer: nn.Linear, gain: float) -> nn.Linear:
    with intra_op_threads(1):  # LAPACK's QR gives other last bits on more threads: the same init on any
        nn.init.orthogonal_(layer.weight, gain)
    nn.init.zeros_(layer.bias)
    return layer


def _key(channel: str) -> str:
    return channel.replace("->", "__to__")
