"""The tasks: Copy and Repeat Copy (with their curriculum streams), character-level text."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .model import Core


@dataclass
class Sequence:
    """One batch of sequences: inputs, targets and a mask of the steps that are scored."""

    inputs: torch.Tensor  # (B, L, in) float, or (B, L) token ids
    targets: torch.Tensor  # (B, L, out) bits, or (B, L) token ids
    mask: torch.Tensor  # (B, L) 1 where the step is scored


class CopyTask:
    """Copy (Graves et al. 2014): ``N`` random ``bits``-bit vectors, a delimiter, then reproduce them.
    Repeat Copy: the delimiter channel carries the repeat count ``R`` (scaled), the output is the sequence
    ``R`` times followed by an end marker. Inputs have two extra channels (delimiter, repeat count);
    outputs one extra (end marker, repeat copy only). Curriculum: the length grows when the error of a
    batch (bits per scored step) falls below the threshold; for repeat copy ``N`` and ``R`` grow in turn."""

    def __init__(self, repeat: bool, bits: int, max_repeats: int = 20) -> None:
        self.repeat, self.bits, self.max_repeats = repeat, bits, max_repeats
        self.in_dim = bits + 2
        self.out_dim = bits + (1 if repeat else 0)

    def sample(self, batch: int, n: int, r: int, generator: torch.Generator) -> Sequence:
        b = self.bits
        data = torch.randint(0, 2, (batch, n, b), generator=generator).float()
        reps = r if self.repeat else 1
        out_len = n * reps + (1 if self.repeat else 0)
        length = n + 1 + out_len
        x = torch.zeros(batch, length, self.in_dim)
        y = torch.zeros(batch, length, self.out_dim)
        mask = torch.zeros(batch, length)
        x[:, :n, :b] = data
        x[:, n, b] = 1.0  # delimiter
        if self.repeat:
            x[:, n, b + 1] = r / self.max_repeats
        y[:, n + 1: n + 1 + n * reps, :b] = data.repeat(1, reps, 1)
        if self.repeat:
            y[:, -1, b] = 1.0  # end marker
        mask[:, n + 1:] = 1.0
        return Sequence(x, y, mask)

    def loss_sum(self, out: torch.Tensor, seq: Sequence, lo: int, hi: int) -> torch.Tensor:
        """Summed binary cross-entropy (nats) over the scored steps ``lo:hi``."""
        bce = F.binary_cross_entropy_with_logits(out, seq.targets[:, lo:hi], reduction="none").sum(-1)
        return (bce * seq.mask[:, lo:hi]).sum()


class CopyStream:
    """Sequences back to back in each of ``B`` rows, cut into windows of ``T`` steps wherever they fall (as a
    continuous stream, so a sequence often spans a window boundary and sometimes fits inside a window). New
    sequences have the curriculum's current length."""

    def __init__(self, task: CopyTask, batch: int) -> None:
        self.task, self.batch = task, batch
        self.x = torch.zeros(batch, 0, task.in_dim)
        self.y = torch.zeros(batch, 0, task.out_dim)
        self.mask = torch.zeros(batch, 0)

    def window(self, T: int, n: int, r: int, generator: torch.Generator) -> Sequence:
        """The next ``T`` steps (new sequences of length ``n``, ``r`` drawn as needed)."""
        while self.x.shape[1] < T:
            seq = self.task.sample(self.batch, n, r, generator)
            self.x, self.y = torch.cat([self.x, seq.inputs], 1), torch.cat([self.y, seq.targets], 1)
            self.mask = torch.cat([self.mask, seq.mask], 1)
        out = Sequence(self.x[:, :T], self.y[:, :T], self.mask[:, :T])
        self.x, self.y, self.mask = self.x[:, T:], self.y[:, T:], self.mask[:, T:]
        return out

    def state_dict(self) -> dict:
        return {"x": self.x, "y": self.y, "mask": self.mask}

    def load_state_dict(self, state: dict) -> None:
        self.x, self.y, self.mask = state["x"], state["y"], state["mask"]


class TextStream:
    """``B`` rows, each a contiguous stretch of the text, read ``T`` characters at a time (wrapping)."""

    def __init__(self, ids: torch.Tensor, batch: int) -> None:
        n = len(ids) // batch
        self.rows = ids[: n * batch].view(batch, n)
        self.pos = 0

    def window(self, T: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.pos + T + 1 > self.rows.shape[1]:
            self.pos = 0
        x = self.rows[:, self.pos: self.pos + T]
        y = self.rows[:, self.pos + 1: self.pos + T + 1]
        self.pos += T
        return x, y

    def state_dict(self) -> dict:
        return {"pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.pos = int(state["pos"])


@torch.no_grad()
def bits_per_char(
    core: Core, ids: torch.Tensor, device: torch.device, rows: int = 16, chunk: int = 1000
) -> float:
    """Cross-entropy in bits per character, the state carried through the whole text (no truncation)."""
    n = len(ids) // rows
    data = ids[: n * rows].view(rows, n).to(device)
    state = core.initial_state(rows, device)
    total = 0.0
    for lo in range(0, n - 1, chunk):
        hi = min(n - 1, lo + chunk)
        out, _, state = core(data[:, lo:hi], state)
        total += float(F.cross_entropy(out.reshape(-1, out.shape[-1]), data[:, lo + 1: hi + 1].reshape(-1),
                                       reduction="sum"))
    return total / (rows * (n - 1)) / math.log(2)
