"""One window of truncated BPTT on the core's ticks: the state that crosses the boundary goes out through
the interface to the agent's own future self (ĝ now, the true gradient one window later)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...core import Interface, System
from .model import AGENT, Core


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
