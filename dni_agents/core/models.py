"""The models an interface learns: the utility model (synthetic gradients) and the synthetic-input model.

A utility model ``U(h, context) -> ĝ`` predicts the gradient of the receiver's loss with respect to
the message ``h``. Its last layer starts at zero (weights and bias), so ĝ is exactly 0 until it has
learned something: an untrained interface never pushes the sender in a random direction.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

UtilityKind = Literal["linear", "mlp", "conv"]


def _zero(layer: nn.Module) -> nn.Module:
    nn.init.zeros_(layer.weight)
    if getattr(layer, "bias", None) is not None:
        nn.init.zeros_(layer.bias)
    return layer


def _mlp(in_dim: int, out_dim: int, hidden: int, layers: int) -> list[nn.Module]:
    """``layers`` linear layers (``layers - 1`` hidden ones with ReLU); the last is left for the caller."""
    mods: list[nn.Module] = []
    dim = in_dim
    for _ in range(layers - 1):
        mods += [nn.Linear(dim, hidden), nn.ReLU()]
        dim = hidden
    mods.append(nn.Linear(dim, out_dim))
    return mods


class UtilityModel(nn.Module):
    """Synthetic-gradient model: ĝ = U(h, context), same shape as h.

    kinds: ``linear`` (default; optionally low-rank through ``rank``), ``mlp`` (``layers`` linear layers),
    ``conv`` (for image-shaped messages (C, H, W): 5×5 convolutions, context broadcast as extra channels).
    ``context_dim > 0`` makes it a cDNI model: the context (e.g. a one-hot label) is concatenated to h.
    ``normalize`` standardises each message (layer norm without parameters) before the model sees it, so
    its step size does not grow with the message's scale: an RNN's unbounded state (an LSTM's cell) fed
    back through a ĝ linear in it otherwise ran away.
    ``gate = k`` (cDNI): the context's last ``k`` entries are a vector ``s`` the prediction is linear in,
    ĝ = U(h, c_rest) · s with U giving a (message × k) matrix. The gradient of a receiver's loss for a
    message is (∂loss/∂its outputs) times (∂its outputs/∂message): with ``s`` the receiver's sensitivity to
    its own outputs (for a policy loss, the advantage times e_action − π per action logit), U only has to
    learn the receiver's Jacobian from what it saw, while a model of the message alone (or one additive in
    the advantage) predicts about zero: the advantage's sign decides the gradient's.
    ``squash_input`` feeds it tanh(h): an MLP whose input grows with the message extrapolates ĝ ∝ h, which
    pushes h further, so an unbounded message can run away.
    ``candidates = (n, f)`` (with ``gate = n``): the context starts with ``n`` candidates of ``f`` features
    and the receiver scores each with one shared network (a referential game's receiver): so does this
    model, one column of U per candidate from (h, candidate i, the rest of the context). A flat MLP has to
    learn the same map ``n`` times over (scripts/cdni_fit.py compares the two).
    """

    def __init__(
        self,
        message_shape: tuple[int, ...],
        context_dim: int = 0,
        kind: UtilityKind = "linear",
        hidden: int = 1024,
        layers: int = 2,
        rank: int | None = None,
        normalize: bool = False,
        gate: int = 0,
        squash_input: bool = False,
        candidates: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        gate = int(gate)
        if gate < 0 or (gate and context_dim < gate):
            raise ValueError(f"a gated utility model needs a context of at least its gate's {gate} entries "
                             f"(got {context_dim})")
        if candidates is not None and (gate != candidates[0] or kind != "mlp"
                                       or context_dim < candidates[0] * candidates[1] + gate):
            raise ValueError(f"a candidate-wise utility model needs kind mlp, gate = {candidates[0]} (one "
                             f"per candidate) and a context that starts with the candidates (got gate "
                             f"{gate}, kind {kind}, context {context_dim})")
        self.candidates = tuple(candidates) if candidates is not None else None
        if gate and kind == "conv":
            raise ValueError("a gated utility model must be linear or mlp, not conv")
        self.message_shape = tuple(message_shape)
        self.gate, self.squash_input = gate, squash_input
        context_dim = context_dim - gate
        self.normalize = normalize
        self.context_dim = context_dim
        self.kind, self.rank = kind, rank
        dim = math.prod(self.message_shape)
        out_dim = dim * max(gate, 1)
        if kind == "linear":
            if rank is None:
                mods: list[nn.Module] = [nn.Linear(dim + context_dim, out_dim)]
            else:
                mods = [nn.Linear(dim + context_dim, rank, bias=False), nn.Linear(rank, out_dim)]
        elif kind == "mlp" and self.candidates is not None:
            n, f = self.candidates
            mods = _mlp(dim + context_dim - n * f + f, dim, hidden, layers)  # per candidate: one column
        elif kind == "mlp":
            mods = _mlp(dim + context_dim, out_dim, hidden, layers)
        elif kind == "conv":
            if len(self.message_shape) != 3:
                raise ValueError(f"a conv utility model needs (C, H, W) messages, got {self.message_shape}")
            channels = self.message_shape[0]
            mods, c_in = [], channels + context_dim
            for _ in range(layers - 1):
                mods += [nn.Conv2d(c_in, hidden, 5, padding=2), nn.BatchNorm2d(hidden), nn.ReLU()]
                c_in = hidden
            mods.append(nn.Conv2d(c_in, channels, 5, padding=2))
        else:
            raise ValueError(f"unknown utility model kind {kind!r} (allowed: linear, mlp, conv)")
        _zero(mods[-1])
        self.net = nn.Sequential(*mods)

    @property
    def linear(self) -> nn.Linear | None:
        """The one linear map ĝ = W·x + b is, for the plain ``linear`` kind (no rank, no gate), of x =
        :meth:`linear_input`: its regression has a closed form (the ``closed_form`` speed-up,
        :mod:`~dni_agents.core.speedups`). None for every other form."""
        if self.kind == "linear" and self.rank is None and not self.gate:
            return self.net[0]
        return None

    def linear_input(self, h: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """x of ĝ = W·x + b for the plain ``linear`` kind: the flattened message (squashed, normalised if
        asked), then the context; ``forward`` is ``linear(linear_input(h, context))`` in h's shape."""
        batch = h.shape[0]
        if self.squash_input:
            h = torch.tanh(h)
        if self.normalize:
            h = F.layer_norm(h, h.shape[1:])
        x = h.reshape(batch, -1)
        if self.context_dim:
            if context is None:
                raise ValueError("this utility model is conditioned (cDNI) and needs a context tensor")
            x = torch.cat([x, context.reshape(batch, -1).to(h.dtype)], dim=1)
        return x

    def forward(self, h: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        linear = self.linear
        if linear is not None:
            return linear(self.linear_input(h, context)).reshape(h.shape)
        batch = h.shape[0]
        if self.squash_input:
            h = torch.tanh(h)
        if self.normalize:
            h = F.layer_norm(h, h.shape[1:])
        if self.kind == "conv":
            x = h
            if self.context_dim:
                c = context.reshape(batch, self.context_dim, 1, 1).to(h.dtype)
                x = torch.cat([h, c.expand(-1, -1, *h.shape[2:])], dim=1)
            return self.net(x)
        x = h.reshape(batch, -1)
        gate = None
        if self.context_dim or self.gate:
            if context is None:
                raise ValueError("this utility model is conditioned (cDNI) and needs a context tensor")
            context = context.reshape(batch, -1).to(h.dtype)
            if self.gate:
                context, gate = context[:, : self.context_dim], context[:, self.context_dim:]
            x = torch.cat([x, context], dim=1)
        if self.candidates is not None:
            n, f = self.candidates
            cands = context[:, : n * f].reshape(batch, n, f)
            rest = torch.cat([x[:, : x.shape[1] - context.shape[1]], context[:, n * f:]], 1)
            per = self.net(torch.cat([rest.unsqueeze(1).expand(-1, n, -1), cands], -1))  # (B, n, dim)
            out = per.transpose(1, 2).reshape(batch, -1)  # (B, dim·n): column i from candidate i
        else:
            out = self.net(x)
        if gate is not None:
            out = (out.view(batch, -1, self.gate) @ gate.unsqueeze(-1)).squeeze(-1)
        return out.reshape(h.shape)

    @property
    def affine(self) -> bool:
        """Whether ĝ is affine in the model's weights for a given input (its weight gradient does not depend
        on its weights): the ``keep_prediction`` speed-up applies (:mod:`~dni_agents.core.speedups`)."""
        return self.kind == "linear" and self.rank is None


def regression_loss(prediction: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
                    ) -> torch.Tensor:
    """The utility model's loss: the mean squared error of ĝ against the true gradient, or with row weights
    (how much each row counts as an example) the weighted mean over rows of each row's mean square."""
    if weight is None:
        return F.mse_loss(prediction, target)
    per_row = (prediction - target).pow(2).flatten(1).mean(1)
    return (per_row * weight.flatten()).sum() / weight.sum().clamp_min(1e-12)


class SyntheticInputModel(nn.Module):
    """Forward unlocking: predicts the message a receiver will get from a source the receiver already has
    (for a feed-forward stage, the network's input), so the receiver can run before the sender."""

    def __init__(
        self,
        source_shape: tuple[int, ...],
        message_shape: tuple[int, ...],
        kind: Literal["linear", "mlp"] = "mlp",
        hidden: int = 1024,
        layers: int = 2,
    ) -> None:
        super().__init__()
        self.message_shape = tuple(message_shape)
        src, dim = math.prod(source_shape), math.prod(self.message_shape)
        if kind == "linear":
            mods: list[nn.Module] = [nn.Linear(src, dim)]
        elif kind == "mlp":
            mods = _mlp(src, dim, hidden, layers)
        else:
            raise ValueError(f"unknown synthetic-input kind {kind!r} (allowed: linear, mlp)")
        self.net = nn.Sequential(*mods)

    def forward(self, source: torch.Tensor) -> torch.Tensor:
        return self.net(source.reshape(source.shape[0], -1)).reshape(source.shape[0], *self.message_shape)
