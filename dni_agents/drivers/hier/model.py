"""The hierarchical system: A (fast RNN, its own odd-count task) and B (slow RNN, the target count), as
agents and interfaces of one core system. No training code: the block step is :mod:`.step`, the data
:mod:`.stream`."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ...config import Config, ConfigError, interface_config
from ...core import Agent, Interface, System
from ..common import agent_optimizer, build_interface
from ..rnn.model import Core

A, B = "A", "B"
MESSAGE, A_SELF, B_SELF = "A->B", "A->A", "B->B"
CHECKPOINT = "checkpoint.pt"
# hier.yaml lists the channels in this order: interfaces.0 = A -> B, .1 = A -> A, .2 = B -> B
METHODS: dict[str, list[str]] = {
    "none": ["interfaces.0.mode=none"],
    "backprop": ["interfaces.0.mode=backprop"],
    "dni": ["interfaces.0.mode=dni"],
    "cdni": ["interfaces.0.mode=cdni"],
    "cdni_window": ["interfaces.0.mode=cdni", "hier.cdni_context=window"],
}
TEMPORAL: dict[str, list[str]] = {
    "off": ["interfaces.1.mode=none", "interfaces.2.mode=none"],
    "on": ["interfaces.1.mode=dni", "interfaces.2.mode=dni"],
}


# ------------------------------------------------------------------------------------------------ agents
class Sender(nn.Module):
    """Agent A: a GRU over the digits, a readout for its own count at the end of the window, and a message
    that summarises the window: a linear read of A's state at every step, summed over the window (a sum
    suits counts; a read of the final state alone left the digits' identities too hard to reach, for
    backprop and DNI alike)."""

    def __init__(self, in_dim: int, hidden: int, classes: int, message_size: int) -> None:
        super().__init__()
        self.core = Core("gru", in_dim, hidden, classes, None, aux=False)
        self.message = nn.Linear(hidden, message_size)

    def forward(
        self, x: torch.Tensor, state: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``x``: (N, T, in). Returns A's logits at the window's end, its final state and the message."""
        out, hs, final = self.core(x, state)
        return out[:, -1], final, self.message(hs).sum(1)


# ------------------------------------------------------------------------------------------------ system
@dataclass
class Hier:
    system: System
    a: Sender
    b: Core
    message: Interface
    a_self: Interface
    b_self: Interface
    cdni_context: str = "label"  # what a cdni utility model sees: B's label, or the window's own count

    @property
    def joint(self) -> bool:
        """``backprop`` on A -> B couples the agents: A's windows and B's unroll are one tick."""
        return any(len(group) > 1 for group in self.system.coupled())


def _check_channels(cfg: Config) -> None:
    for name, (s, r) in ((A_SELF, (A, A)), (B_SELF, (B, B))):
        mode = interface_config(cfg, s, r).mode
        if mode not in ("none", "dni"):
            raise ConfigError(
                f"interfaces ({name}): mode {mode!r} is not supported on an agent's channel to its own "
                f"future (allowed: none, dni)"
            )
    mode = interface_config(cfg, A, B).mode
    if mode == "rial":
        raise ConfigError(
            f"interfaces ({MESSAGE}): mode 'rial' needs driver marl (allowed: none, backprop, dni, cdni)"
        )


def build(cfg: Config, in_dim: int, device: torch.device) -> Hier:
    h = cfg.hier
    _check_channels(cfg)
    T, K, U = h.period, h.memory, h.b_truncation
    a = Sender(in_dim, h.a_hidden, T + 1, h.message_size).to(device)
    b = Core("gru", h.message_size, h.b_hidden, T * K + 1, None, aux=False).to(device)
    agents = [
        Agent(A, a, agent_optimizer(cfg, A, a.parameters()), period=T),
        Agent(B, b, agent_optimizer(cfg, B, b.parameters()), period=T * U),
    ]
    message = build_interface(cfg, A, B, (h.message_size,), device, context_dim=T * K + 1)
    a_self = build_interface(cfg, A, A, (h.a_hidden,), device)
    b_self = build_interface(cfg, B, B, (h.b_hidden,), device)
    system = System(agents, [message, a_self, b_self], on_nonfinite=cfg.trainer.on_nonfinite)
    return Hier(system, a, b, message, a_self, b_self, h.cdni_context)
