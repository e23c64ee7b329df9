"""The recurrent core (LSTM or GRU, optional aux head) as one agent with the interface to its own future
self. No training code: one window of truncated BPTT is :mod:`.step`."""

from __future__ import annotations

import torch
from torch import nn

from ...config import Config
from ...core import Agent, Interface, System
from ..common import agent_optimizer, build_interface

METHODS: dict[str, list[str]] = {
    "bptt": ["interface_defaults.mode=none", "rnn.aux=false"],
    "dni": ["interface_defaults.mode=dni", "rnn.aux=false"],
    "dni_aux": ["interface_defaults.mode=dni", "rnn.aux=true"],
}
AGENT = "rnn"
CHECKPOINT = "checkpoint.pt"


class Core(nn.Module):
    """Input layer → LSTM/GRU → readout, plus the aux head of ``dni_aux``. The recurrent state travels as
    one flat tensor (LSTM: ``[h | c]``), because that tensor is the message across the boundary."""

    def __init__(self, cell: str, in_dim: int, hidden: int, out_dim: int, vocab: int | None, aux: bool):
        super().__init__()
        self.cell, self.hidden = cell, hidden
        self.embed = nn.Embedding(vocab, in_dim) if vocab else None
        self.rnn = (nn.LSTM if cell == "lstm" else nn.GRU)(in_dim, hidden, batch_first=True)
        self.readout = nn.Linear(hidden, out_dim)
        self.state_size = hidden * (2 if cell == "lstm" else 1)
        self.aux = nn.Linear(hidden, self.state_size) if aux else None

    def initial_state(self, batch: int, device: torch.device) -> torch.Tensor:
        return torch.zeros(batch, self.state_size, device=device)

    def forward(
        self, x: torch.Tensor, state: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``x``: (B, T, in) or (B, T) token ids. Returns outputs (B, T, out), hidden states (B, T, H), and
        the final state (B, state_size)."""
        if self.embed is not None:
            x = self.embed(x)
        if self.cell == "lstm":
            h0, c0 = state.split(self.hidden, dim=-1)
            hs, (h, c) = self.rnn(x, (h0.unsqueeze(0).contiguous(), c0.unsqueeze(0).contiguous()))
            final = torch.cat([h[0], c[0]], -1)
        else:
            hs, h = self.rnn(x, state.unsqueeze(0).contiguous())
            final = h[0]
        return self.readout(hs), hs, final


def build(cfg: Config, in_dim: int, out_dim: int, vocab: int | None, device: torch.device
          ) -> tuple[System, Core, Interface]:
    r = cfg.rnn
    core = Core(r.cell, in_dim, r.hidden, out_dim, vocab, r.aux).to(device)
    agent = Agent(AGENT, core, agent_optimizer(cfg, AGENT, core.parameters()), max_grad_norm=r.max_grad_norm)
    iface = build_interface(cfg, AGENT, AGENT, (core.state_size,), device)
    return System([agent], [iface], on_nonfinite=cfg.trainer.on_nonfinite), core, iface
