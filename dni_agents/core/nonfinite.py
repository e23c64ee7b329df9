"""NaN and Inf: how they are found cheaply and what is raised when one would poison training. The policy
(``on_nonfinite``: ``stop`` or ``skip``) is the system's."""

from __future__ import annotations

import math
from typing import Literal

import torch

OnNonFinite = Literal["stop", "skip"]


class NonFiniteError(RuntimeError):
    """A NaN or Inf that would poison training: ``what`` of ``where`` at clock ``step``, where ``what`` is
    'loss' or 'gradient' (of its parameters) of an agent, 'synthetic gradient' or 'target' of an interface.
    Raised when the policy is ``stop``."""

    def __init__(self, where: str, what: str, step: int) -> None:
        kind = "agent" if what in ("loss", "gradient") else "interface"
        super().__init__(f"non-finite {what} of {kind} {where} at step {step}")
        self.where, self.what, self.step = where, what, step


def first_nonfinite(tensors: list[torch.Tensor]) -> int | None:
    """The index of the first tensor holding a NaN or Inf, or None. Cheap: a NaN or Inf survives a sum, so
    one sum per tensor (one pass, no mask as ``isfinite`` makes) and one device sync for all (on a CPU,
    where a sync costs nothing, the sums are added in Python); only if the total is not finite is each
    tensor checked element by element (a sum of huge finite values may overflow)."""
    if not tensors:
        return None
    if tensors[0].is_cpu:  # no sync to save: add the sums in Python (no stack, no kernel)
        total = 0.0
        for t in tensors:
            if t.dim() == 0:  # a loss: its own sum, read without a kernel
                total += t.item()
            elif t.dtype is torch.float32:
                total += t.sum().item()
            else:  # a half-precision sum of finite values may overflow its own type
                total += t.detach().sum(dtype=torch.float32).item()
    else:
        device = tensors[0].device
        total = float(torch.stack([t.detach().sum(dtype=torch.float32).to(device) for t in tensors]).sum())
    if math.isfinite(total):
        return None
    return next((i for i, t in enumerate(tensors) if not bool(torch.isfinite(t).all())), None)

