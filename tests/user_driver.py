"""A driver that lives outside the package, as a user's would, found through the entry-point group
``dni_agents.drivers``: two agents split a regression y = A·x; the encoder sends its code through one core
interface (mode from the config; cdni's utility model sees y) and the decoder fits y. No edit of
dni_agents is needed to run it."""

from __future__ import annotations

from pathlib import Path

import torch
from pydantic import Field
from torch import nn

from dni_agents.config import Config, PosInt, _Strict
from dni_agents.core import Agent, System
from dni_agents.drivers.common import build_interface, make_optimizer


class RegressionConfig(_Strict):
    """The ``regression:`` section: sizes of the problem."""

    inputs: PosInt = 8
    code: PosInt = 4
    batch: PosInt = 64
    targets: list[PosInt] = Field(default_factory=lambda: [3])


SECTION = RegressionConfig


def agent_names(cfg: Config) -> list[str]:
    return ["encoder", "decoder"]


def train(cfg: Config, run_dir: Path, log: bool = True, progress: bool = True, resume: Path | None = None,
          stop: object = None) -> dict:
    r = cfg.regression
    torch.manual_seed(cfg.seed)
    truth = torch.randn(r.inputs, r.targets[0])
    enc, dec = nn.Linear(r.inputs, r.code), nn.Linear(r.code, r.targets[0])
    agents = [Agent(n, m, make_optimizer(cfg.trainer.optimizer, m.parameters(), cfg.trainer.lr))
              for n, m in (("encoder", enc), ("decoder", dec))]
    # cdni: the utility model also sees the decoder's target, all it needs to predict its gradient exactly
    iface = build_interface(cfg, "encoder", "decoder", (r.code,), torch.device("cpu"),
                            context_dim=r.targets[0])
    system = System(agents, [iface])
    losses = []
    for step in range(cfg.trainer.steps):
        x = torch.randn(r.batch, r.inputs)
        y = x @ truth
        with system.tick("encoder", step) as t:
            t.send(iface, enc(x), context=y if iface.mode == "cdni" else None)
        with system.tick("decoder", step) as t:
            loss = ((dec(t.receive(iface)) - y) ** 2).mean()
            t.add_loss(loss)
        system.settle()
        losses.append(loss.item())
    return {"first_loss": sum(losses[:10]) / 10, "last_loss": sum(losses[-10:]) / 10}


def evaluate(run_dir: Path) -> dict:
    return {"run_dir": str(run_dir)}
