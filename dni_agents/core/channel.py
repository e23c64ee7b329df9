"""What a channel does to a message on its way: noise, discretisation, and when it is heard.

This is DIAL's discretise/regularise unit (Foerster et al., "Learning to Communicate with Deep Multi-Agent
Reinforcement Learning", 2016), kept apart from :class:`~dni_agents.core.Interface` (which decides what
gradient the sender gets) so any driver can put it between a sender and a receiver:

* **training**: the receiver hears ``tanh(h + σ·ε)`` (``discretize``) or ``h + σ·ε``, with ε ~ N(0, 1)
  drawn by the caller (so a replay hears exactly what the rollout heard). Gradients pass the noise as in
  DIAL: ∂heard/∂h = tanh'(h + σ·ε). Noise pushes a learned code apart: only messages far from the
  threshold survive it, which is what makes them discrete later.
* **evaluation**: no noise; a discretised channel delivers one of ``levels`` values per component (±1 for
  2 levels), exactly.
* ``delay``: 0, the receiver hears the message in the step it is sent (the sender acts first); 1, in the
  next step (as mpe2's own communication; the first step is silent).
* ``outage``: in training, the probability that the channel is down (the receiver hears silence, zeros,
  and the sender gets no gradient) for a unit the driver chooses (marl: a whole episode of one environment
  copy). Message dropout (Kim et al., "Message-Dropout", AAAI 2019) at the scale of an episode: a receiver
  that has played without the channel knows what to do when it hears nothing, instead of reading silence
  as a symbol.

Where it sits: on the **sender's side of the interface**. What crosses the interface is what the receiver
hears, so the utility model predicts the receiver's gradient for the heard message, and the sender's own
backward pass applies the channel's derivative exactly (a saturated symbol gets no gradient, as under
backprop). Put after the interface, the utility model would have to learn tanh' itself; its errors on
saturated symbols do not vanish, the sender's Adam turns them into steps, and the messages drift out of
reach of any gradient.

Messages are tensors of shape (rows, size); nothing here holds state, so one channel may serve many.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ChannelModel:
    """Noise std ``noise`` in training, hard ``discretize``-ation to ``levels`` values at evaluation, the
    ``delay`` (0 or 1 steps) after which the receiver hears it, and the training ``outage`` probability."""

    noise: float = 0.0
    discretize: bool = False
    levels: int = 2
    delay: int = 1
    outage: float = 0.0

    def __post_init__(self) -> None:
        if self.noise < 0:
            raise ValueError(f"channel noise must be >= 0, got {self.noise}")
        if self.levels < 2:
            raise ValueError(f"channel levels must be >= 2, got {self.levels}")
        if self.delay not in (0, 1):
            raise ValueError(f"channel delay must be 0 or 1, got {self.delay}")
        if not 0 <= self.outage < 1:
            raise ValueError(f"channel outage must be in [0, 1), got {self.outage}")

    @property
    def identity(self) -> bool:
        """Whether the channel hands the message on unchanged (no noise, no discretisation)."""
        return self.noise == 0 and not self.discretize and self.outage == 0

    def sample_noise(self, shape: tuple[int, ...], generator: torch.Generator | None) -> torch.Tensor | None:
        """ε for one transmission in training (None when the channel has no noise)."""
        if self.noise == 0:
            return None
        return torch.randn(shape, generator=generator)

    def sample_outage(self, units: int, generator: torch.Generator | None) -> torch.Tensor | None:
        """Which of ``units`` hear the channel in training (1.0: up, 0.0: down); None without outages."""
        if self.outage == 0:
            return None
        return (torch.rand(units, generator=generator) >= self.outage).float()

    def transmit(
        self, h: torch.Tensor, noise: torch.Tensor | None = None, training: bool = True,
        up: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """What the receiver hears of ``h``: in training with the given ε (differentiable in h) and, where
        ``up`` (one entry per row of ``h``) is 0, silence; at evaluation the clean (discretised) message."""
        if not training:
            return self.quantize(h) if self.discretize else h
        x = h if noise is None or self.noise == 0 else h + self.noise * noise.to(h.device, h.dtype)
        heard = torch.tanh(x) if self.discretize else x
        if up is None:
            return heard
        return heard * up.to(h.device, h.dtype).view(-1, *([1] * (h.dim() - 1)))

    def symbols(self, h: torch.Tensor) -> torch.Tensor:
        """The symbol index 0..levels-1 of every component of a (pre-squash) message."""
        scaled = (torch.tanh(h) + 1) / 2 * (self.levels - 1)
        return torch.round(scaled).long().clamp(0, self.levels - 1)

    def quantize(self, h: torch.Tensor) -> torch.Tensor:
        """The discrete value the receiver gets at evaluation: ``levels`` evenly spaced values in [-1, 1]."""
        return (self.symbols(h).to(h.dtype) * (2 / (self.levels - 1)) - 1).detach()

    @torch.no_grad()
    def stats(self, h: torch.Tensor, noise: torch.Tensor | None = None) -> dict[str, float]:
        """How a discretised channel is used, over messages ``h`` (rows, size): bits per component (the
        entropy of its symbol) and, given the training noise, how often the symbol heard in training differs
        from the one the clean message gives at evaluation (``symbol_flip_rate``)."""
        if not self.discretize or h.numel() == 0:
            return {}
        clean = self.symbols(h.flatten(1))
        out: dict[str, float] = {}
        for k in range(clean.shape[1]):
            p = torch.bincount(clean[:, k], minlength=self.levels).float() / clean.shape[0]
            p = p[p > 0]
            out[f"bits/{k}"] = float(-(p * p.log2()).sum())
        if noise is not None and self.noise > 0:
            heard = self.symbols(h.flatten(1) + self.noise * noise.flatten(1).to(h.dtype))
            out["symbol_flip_rate"] = float((heard != clean).float().mean())
        return out
