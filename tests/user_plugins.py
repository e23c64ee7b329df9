"""Code that lives outside the package and plugs into it by import string, as a user's own would:
a network body, a utility model, and an AEC environment that cannot be run in parallel."""

from __future__ import annotations

import torch
from pettingzoo import AECEnv
from torch import nn


class ResidualBody(nn.Module):
    """A body for ``agents[i].network``: features = tanh(W x) + a residual ReLU block of ``width``."""

    def __init__(self, in_dim: int, hidden: int, width: int = 32) -> None:
        super().__init__()
        self.inp = nn.Linear(in_dim, hidden)
        self.block = nn.Sequential(nn.Linear(hidden, width), nn.ReLU(), nn.Linear(width, hidden))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.inp(x))
        return torch.tanh(h + self.block(h))


def wrong_width_body(in_dim: int, hidden: int) -> nn.Module:
    """Features of the wrong width: the driver must say so in one line."""
    return nn.Linear(in_dim, hidden + 1)


class ContextLinearUtility(nn.Module):
    """A utility model for ``utility.kind``: ĝ = scale · W [message, context], W starting at zero."""

    def __init__(self, message_shape: tuple[int, ...], context_dim: int = 0, gate: int = 0,
                 scale: float = 1.0) -> None:
        super().__init__()
        (size,) = message_shape
        self.scale, self.built_with = scale, {"context_dim": context_dim, "gate": gate}
        self.map = nn.Linear(size + context_dim, size)
        nn.init.zeros_(self.map.weight)
        nn.init.zeros_(self.map.bias)

    def forward(self, message: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        x = message if context is None else torch.cat([message, context], -1)
        return self.scale * self.map(x)


class FlatUtility(nn.Module):
    """Returns one number per message instead of a gradient shaped like it."""

    def __init__(self, message_shape: tuple[int, ...], context_dim: int = 0, gate: int = 0) -> None:
        super().__init__()
        self.map = nn.Linear(message_shape[0], 1)

    def forward(self, message: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        return self.map(message)


class TurnBased(AECEnv):
    """An AEC environment whose agents must take turns (it does not declare ``is_parallelizable``)."""

    metadata = {"name": "turn_based_v0"}
    possible_agents = ["a", "b"]


def turn_based_env(**kwargs: object) -> TurnBased:
    return TurnBased()
