"""The recurrent core (LSTM or GRU, optional aux head) and one window of truncated BPTT on the core's
ticks, with the interface to its own future self at the boundary."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...config import Config
from ...core import Agent, Interface, System
from ..common import build_interface, make_optimizer

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
    optimizer = make_optimizer(cfg.trainer.optimizer, core.parameters(), cfg.trainer.lr,
                               fused=cfg.trainer.fused)
    agent = Agent(AGENT, core, optimizer, max_grad_norm=r.max_grad_norm)
    iface = build_interface(cfg, AGENT, AGENT, (core.state_size,), device)
    return System([agent], [iface], on_nonfinite=cfg.trainer.on_nonfinite), core, iface


def window(
    system: System, core: Core, iface: Interface, step: int, x: torch.Tensor, loss_fn,
    state: torch.Tensor | None, first: bool, last: bool, aux_weight: float,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """One tick: the window's unroll from the state the previous window sent (a fresh leaf whose gradient
    goes back as that window's target), its loss, and — unless the sequence ends here — the final state sent
    to the next window (ĝ applied now). ``loss_fn(out)`` is the window's summed loss already divided by the
    batch's normaliser. Returns the outputs, the final state (detached) and the loss value."""
    with system.tick(AGENT, step) as tick:
        start = state if first else tick.receive(iface, step=step - 1)
        out, hs, final = core(x, start)
        loss = loss_fn(out)
        tick.add_loss(loss)
        if not last:
            tick.send(iface, final, step=step)
            if core.aux is not None and iface.utility is not None:
                # dni_aux: every step of the window predicts the synthetic gradient the window ends with
                with torch.no_grad():
                    target = iface.utility(final.detach(), None)
                pred = core.aux(hs)
                tick.add_loss(aux_weight * F.mse_loss(pred, target.unsqueeze(1).expand_as(pred)))
    return out.detach(), final.detach(), loss.item()
