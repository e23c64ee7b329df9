"""A driver that lives outside the package, as a user's would, found through the entry-point group
``dni_agents.drivers``: two agents split a regression y = A·x; the encoder sends its code through one core
interface (mode from the config; cdni's utility model sees y) and the decoder fits y. No edit of
dni_agents is needed to run it, and it uses the public API only:

* its config section derives from ``dni_agents.config.Section`` (unknown keys are one-line errors);
* its agents and interface come from ``dni_agents.drivers`` (``agent_optimizer``, ``build_interface``);
* ``dni-agents train`` hands ``train`` a run folder that already holds ``config.yaml``: the driver writes
  its checkpoint there, and ``dni-agents eval RUN_DIR`` calls ``evaluate``, which rebuilds the system from
  that config and scores the checkpoint on fresh data."""

from __future__ import annotations

from pathlib import Path

import torch
from pydantic import Field
from torch import nn

from dni_agents.config import Config, PosInt, Section, load_config
from dni_agents.core import Agent, Interface, System
from dni_agents.drivers import agent_optimizer, build_interface

CHECKPOINT = "checkpoint.pt"


class RegressionConfig(Section):
    """The ``regression:`` section: sizes of the problem."""

    inputs: PosInt = 8
    code: PosInt = 4
    batch: PosInt = 64
    targets: list[PosInt] = Field(default_factory=lambda: [3])


SECTION = RegressionConfig


def agent_names(cfg: Config) -> list[str]:
    return ["encoder", "decoder"]


def build(cfg: Config) -> tuple[System, Interface, nn.Module, nn.Module, torch.Tensor]:
    """The two agents, their interface and the task's true map, the same for the same config and seed."""
    r = cfg.regression
    torch.manual_seed(cfg.seed)
    truth = torch.randn(r.inputs, r.targets[0])
    enc, dec = nn.Linear(r.inputs, r.code), nn.Linear(r.code, r.targets[0])
    agents = [Agent(n, m, agent_optimizer(cfg, n, m.parameters()))
              for n, m in (("encoder", enc), ("decoder", dec))]
    # cdni: the utility model also sees the decoder's target, all it needs to predict its gradient exactly
    iface = build_interface(cfg, "encoder", "decoder", (r.code,), torch.device("cpu"),
                            context_dim=r.targets[0])
    return System(agents, [iface]), iface, enc, dec, truth


def train(cfg: Config, run_dir: Path, log: bool = True, progress: bool = True, resume: Path | None = None,
          stop: object = None) -> dict:
    r = cfg.regression
    system, iface, enc, dec, truth = build(cfg)
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
    if log:  # the CLI made the folder; a direct call with log=False writes nothing
        torch.save({"system": system.state_dict(), "steps": cfg.trainer.steps}, Path(run_dir) / CHECKPOINT)
    return {"first_loss": sum(losses[:10]) / 10, "last_loss": sum(losses[-10:]) / 10}


def evaluate(run_dir: Path) -> dict:
    """The trained pair's loss on 1,000 fresh inputs, from the run's own config and checkpoint."""
    cfg = load_config(str(Path(run_dir) / "config.yaml"))
    system, _, enc, dec, truth = build(cfg)
    state = torch.load(Path(run_dir) / CHECKPOINT, weights_only=True)
    system.load_state_dict(state["system"])
    x = torch.randn(1000, cfg.regression.inputs, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        loss = ((dec(enc(x)) - x @ truth) ** 2).mean().item()
    return {"eval_loss": loss, "steps": state["steps"]}
