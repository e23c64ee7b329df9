"""The model every method of ``bench parallel`` trains, its two stages, their DNI system, and the setup
(sizes, data, budget) that travels to the workers as JSON; ``KEY=VALUE`` overrides of it."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import yaml
from torch import nn

from ...config import ConfigError
from ...core import Agent, Interface, System, UtilityModel
from ...data import FASHION_MNIST_DIR

METHODS = ("backprop_2threads", "backprop_1thread", "pipelining", "dni_full", "dni_lowrank")
REFERENCES = {"dni_full": "dni_full_inprocess", "dni_lowrank": "dni_lowrank_inprocess"}
MAY_BE_ZERO = ("seed", "max_staleness")
SLOW_B = "hier_slow_b"  # --only name of the slow-B study
RECORD_KEYS = ("method", "samples_per_s", "accuracy", "wall_s", "curve")


@dataclass(frozen=True)
class Setup:
    """Everything the workers need (it travels to them as JSON). ``split``: hidden blocks on stage 0."""

    dataset: str = "fashion_mnist"
    width: int = 1024
    hidden_layers: int = 6  # Linear(+BN)+ReLU blocks, the first from the image; a Linear to the classes ends
    split: int = 3
    batch_size: int = 256
    samples: int = 120_000  # per method: 2 epochs of Fashion-MNIST
    batch_norm: bool = True  # BatchNorm1d after every hidden Linear (as the paper's FCNs)
    mode: str = "cdni"  # the utility model also sees the one-hot label; dni: the message only
    lr: float = 1e-4
    utility_lr: float = 1e-4
    rank: int = 128  # of the low-rank utility model (32 lost 1.6 points to its in-process run at window 1)
    max_staleness: int = 1  # enough to overlap two balanced stages; each step more costs accuracy
    micro_batches: tuple[int, ...] = (2, 4, 8)
    pipe_schedule: str = "gpipe"  # or 1f1b
    pipe_trial_steps: int = 20
    curve_points: int = 16  # snapshots: the time to an accuracy is known to one sixteenth of a run
    eval_samples: int = 2000  # test samples per curve point (the final accuracy uses the whole test set)
    target_fraction: float = 0.95  # the accuracy to reach: this share of backprop_1thread's at its end
    cost_reps: int = 10
    comm_reps: int = 20
    seed: int = 0
    timeout: float = 120.0

    @property
    def steps(self) -> int:
        return max(1, self.samples // self.batch_size)


QUICK = Setup(dataset="digits", width=256, hidden_layers=4, split=2, batch_size=64, samples=64 * 300,
              lr=1e-3, utility_lr=3e-4, rank=16, micro_batches=(2, 4), pipe_trial_steps=10, curve_points=5,
              eval_samples=360, cost_reps=5, comm_reps=10, timeout=60.0)


def default_setup(quick: bool) -> Setup:
    """Quick: digits, narrow. Full: Fashion-MNIST when the Debian package is installed, else digits."""
    if quick:
        return QUICK
    return Setup(dataset="fashion_mnist" if FASHION_MNIST_DIR.is_dir() else "digits")


def apply_overrides(setup: Setup, overrides: Sequence[str]) -> Setup:
    """``width=512 micro_batches=[2,4]``: KEY=VALUE on the setup's fields, values parsed as YAML."""
    fields = {f.name: f for f in dataclasses.fields(Setup)}
    changes: dict = {}
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or key not in fields:
            raise ConfigError(f"bench parallel: unknown setting {key!r} (allowed: {', '.join(fields)})")
        value, default = yaml.safe_load(text), getattr(setup, key)
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, tuple):
            value = tuple(value) if isinstance(value, list) else (value,)
            ok = all(isinstance(v, int) and v > 0 for v in value)
        elif isinstance(default, float):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
            value = float(value) if ok else value
        elif isinstance(default, int):
            ok = isinstance(value, int) and not isinstance(value, bool) and (value > 0 or key in MAY_BE_ZERO)
        else:
            ok = isinstance(value, str)
        if not ok:
            raise ConfigError(f"bench parallel: {key}={text!r} is not a valid {type(default).__name__}")
        changes[key] = value
    setup = dataclasses.replace(setup, **changes)
    if not 1 <= setup.split <= setup.hidden_layers:
        raise ConfigError(f"bench parallel: split must be in 1..hidden_layers={setup.hidden_layers}")
    if setup.mode not in ("dni", "cdni"):
        raise ConfigError(f"bench parallel: mode must be dni or cdni, got {setup.mode!r}")
    if setup.pipe_schedule not in ("gpipe", "1f1b"):
        raise ConfigError(f"bench parallel: pipe_schedule must be gpipe or 1f1b, got {setup.pipe_schedule!r}")
    bad = [m for m in setup.micro_batches if setup.batch_size % m]
    if bad:
        raise ConfigError(f"bench parallel: micro_batches {bad} do not divide batch_size={setup.batch_size}")
    return setup


# ----------------------------------------------------------------------------------------------- model
def build_stages(setup: Setup, input_dim: int, classes: int) -> tuple[nn.Sequential, nn.Sequential]:
    """The two stages, with the same initial weights in every process (seeded)."""
    torch.manual_seed(setup.seed)
    blocks: list[nn.Module] = []
    width = input_dim
    for _ in range(setup.hidden_layers):
        norm = [nn.BatchNorm1d(setup.width)] if setup.batch_norm else []
        blocks.append(nn.Sequential(nn.Linear(width, setup.width), *norm, nn.ReLU()))
        width = setup.width
    head = nn.Linear(width, classes)
    return (nn.Sequential(nn.Flatten(), *blocks[: setup.split]),
            nn.Sequential(*blocks[setup.split:], head))


def build_dni_system(setup: Setup, stages: Sequence[nn.Module], lowrank: bool, classes: int = 10) -> System:
    """Two agents (``stage0``, ``stage1``) and a DNI interface between them; Adam everywhere."""
    context = classes if setup.mode == "cdni" else 0
    utility = UtilityModel((setup.width,), context_dim=context, rank=setup.rank if lowrank else None)
    agents = [Agent(f"stage{i}", m, torch.optim.Adam(m.parameters(), lr=setup.lr))
              for i, m in enumerate(stages)]
    iface = Interface("stage0->stage1", "stage0", "stage1", setup.mode, utility,
                      torch.optim.Adam(utility.parameters(), lr=setup.utility_lr))
    return System(agents, [iface])


@torch.no_grad()
def accuracy(stages: Sequence[nn.Module], x: torch.Tensor, y: torch.Tensor, batch: int = 1000) -> float:
    correct = 0
    for i in range(0, len(x), batch):
        h = x[i : i + batch]
        for m in stages:
            h = m(h)
        correct += int((h.argmax(1) == y[i : i + batch]).sum())
    return correct / max(1, len(x))
