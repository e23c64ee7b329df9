"""The digit streams of the hierarchical task: blocks of ``U`` windows of ``T`` digits with every target."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Block:
    """``U = b_truncation`` windows of ``T`` digits for each of the ``N`` streams, with every target."""

    x: torch.Tensor  # (N, U, T, in) images
    odd: torch.Tensor  # (N, U) A's target: odd digits in each window
    count: torch.Tensor  # (N, U) B's target: the target digit in the last T·K digits, at each B tick
    window_count: torch.Tensor  # (N, U) the target digit in each window alone (for the projector)


class DigitStream:
    """``N`` independent streams of random digits (drawn with replacement). Keeps the per-window counts of the
    last ``K - 1`` windows, so B's target at a tick spans blocks."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, streams: int, T: int, K: int, U: int, digit: int):
        self.x, self.y = x.flatten(1), y
        self.N, self.T, self.K, self.U, self.digit = streams, T, K, U, digit
        self.history = torch.zeros(streams, K - 1, dtype=torch.long)  # before the stream: no digits

    def block(self, generator: torch.Generator) -> Block:
        idx = torch.randint(0, len(self.y), (self.N, self.U * self.T), generator=generator)
        labels = self.y[idx].view(self.N, self.U, self.T)
        window_count = (labels == self.digit).sum(-1)
        counts = torch.cat([self.history, window_count], 1)  # (N, K - 1 + U)
        count = counts.unfold(1, self.K, 1).sum(-1)  # sliding sum over K windows: (N, U)
        self.history = counts[:, counts.shape[1] - (self.K - 1):]
        x = self.x[idx].view(self.N, self.U, self.T, -1)
        return Block(x, (labels % 2).sum(-1), count, window_count)

    def state_dict(self) -> dict:
        return {"history": self.history}

    def load_state_dict(self, state: dict) -> None:
        self.history = state["history"]
