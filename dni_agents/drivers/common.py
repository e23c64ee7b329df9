"""What every driver needs between a config and the core: devices, optimizers, interfaces built from
config, stats logging and atomic checkpoints. Drivers wire agents; the DNI mechanics stay in the core."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import Config, ConfigError, config_to_yaml, interface_config
from ..core import Interface, SyntheticInputModel, System, Transport, UtilityModel
from ..logging import RunLogger, make_run_dir


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA on a machine without it is a config error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device: {name!r} asked for, but CUDA is not available here (allowed: cpu, auto)")
    return torch.device(name)


def make_optimizer(
    kind: str, params: Iterable[nn.Parameter], lr: float, weight_decay: float = 0.0
) -> torch.optim.Optimizer:
    if kind == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {kind!r} (allowed: adam, sgd)")


def build_interface(
    cfg: Config,
    sender: str,
    receiver: str,
    message_shape: tuple[int, ...],
    device: torch.device,
    context_dim: int = 0,
    source_shape: tuple[int, ...] | None = None,
    transport: Transport | None = None,
) -> Interface:
    """The interface ``sender -> receiver`` as the config describes it (defaults + per-channel override)."""
    icfg = interface_config(cfg, sender, receiver)
    utility = utility_optimizer = None
    if icfg.mode in ("dni", "cdni"):
        u = icfg.utility
        utility = UtilityModel(
            message_shape,
            context_dim=context_dim if icfg.mode == "cdni" else 0,
            kind=u.kind,
            hidden=u.hidden,
            layers=u.layers,
            rank=u.rank,
            normalize=u.normalize,
        ).to(device)
        utility_optimizer = make_optimizer(u.optimizer, utility.parameters(), u.lr or cfg.trainer.lr)
    synthetic_input = synthetic_input_optimizer = None
    if icfg.synthetic_input is not None and source_shape is not None:
        s = icfg.synthetic_input
        synthetic_input = SyntheticInputModel(source_shape, message_shape, s.kind, s.hidden, s.layers)
        synthetic_input = synthetic_input.to(device)
        synthetic_input_optimizer = make_optimizer(
            cfg.trainer.optimizer, synthetic_input.parameters(), s.lr or cfg.trainer.lr
        )
    return Interface(
        f"{sender}->{receiver}",
        sender,
        receiver,
        icfg.mode,
        utility,
        utility_optimizer,
        scale=icfg.scale,
        lambda_true=icfg.lambda_true,
        warmup_steps=icfg.warmup_steps,
        synthetic_input=synthetic_input,
        synthetic_input_optimizer=synthetic_input_optimizer,
        transport=transport,
    )


def mean_stats(records: list[Mapping[str, Any]]) -> dict[str, float]:
    """Average each stat over the records that carry it (fidelity is measured only on logging steps; the
    utility loss on every step)."""
    out: dict[str, float] = {}
    for key in dict.fromkeys(k for r in records for k in r if k != "step"):
        values = [float(r[key]) for r in records if key in r]
        out[key] = sum(values) / len(values)
    return out


def log_interfaces(logger: RunLogger, system: System, step: int) -> dict[str, dict[str, float]]:
    """Drain the system's fidelity stats and log their means under ``interface/<name>/…``."""
    out = {}
    for name, records in system.drain_stats().items():
        out[name] = mean_stats(records)
        logger.interface(name, out[name], step)
    return out


def flat_hparams(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted keys for the hyperparameter table (``trainer.lr: 0.001``)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flat_hparams(value, path + "."))
        else:
            out[path] = value
    return out


def save_checkpoint(path: Path, state: dict) -> None:
    """Write atomically (temp file + rename): a crash mid-write never leaves a broken checkpoint."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(2, "no checkpoint to resume from", str(path))
    return torch.load(path, map_location=device, weights_only=True)


def open_run(
    cfg: Config, run_dir: Path, resume: Path | None, log: bool, device: torch.device, checkpoint: str
) -> tuple[Path, RunLogger, dict | None]:
    """The run folder (new, or ``resume``'s), its logger with the config and hyperparameters, and the
    checkpoint to continue from (None for a new run). Prints where the TensorBoard run is."""
    state = None
    if resume is not None:
        run_dir = make_run_dir(Path(resume).parent, Path(resume).name, resume=True)
        state = load_checkpoint(run_dir / checkpoint, device)
    elif log:
        run_dir = make_run_dir(Path(run_dir).parent, Path(run_dir).name)
    logger = RunLogger(run_dir, config_to_yaml(cfg), flat_hparams(cfg.model_dump()), enabled=log)
    if log:
        print(f"TensorBoard run: {run_dir}  (tensorboard --logdir {Path(run_dir).parent})", flush=True)
    return run_dir, logger, state


def write_report(out: Path | None, report: dict) -> None:
    """Write a benchmark's JSON atomically; called after every run, so a long benchmark that is cut short
    keeps what it measured."""
    if out is None:
        return
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(out).with_name(Path(out).name + ".tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(out)
