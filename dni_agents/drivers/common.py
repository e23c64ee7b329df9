"""What every driver needs between a config and the core: devices, optimizers, interfaces built from
config. Drivers wire agents; the DNI mechanics stay in the core (the loop, logging and checkpoints are the
runtime's)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from ..config import UTILITY_KINDS, Config, ConfigError, import_object, interface_config
from ..core import Interface, SyntheticInputModel, Transport, UtilityModel


def make_optimizer(
    kind: str, params: Iterable[nn.Parameter], lr: float, weight_decay: float = 0.0, fused: bool = False
) -> torch.optim.Optimizer:
    """``fused`` (``trainer.fused``): Adam as one kernel for all tensors, 4x faster a step than the per-tensor
    loop on a CPU for a small network; its rounding differs (1e-7 a step), so a run is reproducible with the
    same setting only, and it is off by default to keep every number measured without it reproducible."""
    if kind == "adam":
        params = list(params)
        if fused:
            try:
                return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=True)
            except (RuntimeError, ValueError):  # a device or dtype the fused kernel does not support
                pass
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {kind!r} (allowed: adam, sgd)")


def agent_optimizer(cfg: Config, name: str, params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    """The optimizer of agent ``name``: ``trainer.optimizer`` at the agent's own ``lr`` (its ``agents``
    entry) or else ``trainer.lr``, with ``trainer.weight_decay`` and ``trainer.fused``; the one lookup
    every driver uses."""
    lr = next((a.lr for a in cfg.agents if a.name == name and a.lr is not None), cfg.trainer.lr)
    return make_optimizer(cfg.trainer.optimizer, params, lr, cfg.trainer.weight_decay, cfg.trainer.fused)


def build_interface(
    cfg: Config,
    sender: str,
    receiver: str,
    message_shape: tuple[int, ...],
    device: torch.device,
    context_dim: int = 0,
    gate_dims: int = 0,
    candidates: tuple[int, int] | None = None,
    source_shape: tuple[int, ...] | None = None,
    transport: Transport | None = None,
) -> Interface:
    """The interface ``sender -> receiver`` as the config describes it: ``interface_defaults`` with the
    ``interfaces`` entry of that pair merged in (mode, utility model and its optimizer, scale, λ, warm-up,
    synthetic input). Part of the public API for drivers (``dni_agents.drivers.build_interface``).

    * ``message_shape``: one message without its batch dimension, e.g. ``(code_size,)``;
    * ``device``: where the utility and synthetic-input models live;
    * ``context_dim``: the width of the context a ``cdni`` utility model also sees (pass it with
      ``tick.send(iface, message, context=...)``: e.g. the receiver's label or target); ignored by other
      modes;
    * ``gate_dims``, ``candidates``: a gated cDNI utility model (``utility.gate``): the number of trailing
      context entries the prediction is linear in (the receiver's sensitivity), and ``(n, features)`` of
      a receiver that scores candidates with one network (marl's referential games);
    * ``source_shape``: the shape of what the sender reads; with ``synthetic_input`` set, the model that
      predicts the message from it (forward unlocking) is built for it;
    * ``transport``: how messages and gradients travel (default in-process; ``TorchDistributed`` for
      agents in other processes).

    Raises :class:`~dni_agents.config.ConfigError` (one line) for settings this pair cannot have."""
    icfg = interface_config(cfg, sender, receiver)
    utility = utility_optimizer = None
    if icfg.mode in ("dni", "cdni"):
        u = icfg.utility
        if u.gate and (icfg.mode != "cdni" or gate_dims == 0 or context_dim <= gate_dims):
            raise ConfigError(
                f"interfaces: {sender}->{receiver}.utility.gate needs mode cdni and a receiver whose "
                f"sensitivity the driver hands over (marl: a receiver with a policy; mode {icfg.mode}, "
                f"{gate_dims} gate entries)"
            )
        if u.kwargs and u.kind in UTILITY_KINDS:
            raise ConfigError(f"interfaces: {sender}->{receiver}.utility.kwargs: only for a kind given by "
                              f"import string (kind is {u.kind}; set hidden, layers, rank instead)")
        if u.kind not in UTILITY_KINDS:  # the user's own class, by import string
            key = f"interfaces: {sender}->{receiver}.utility.kind"
            utility = user_utility_model(u, key, message_shape, context_dim if icfg.mode == "cdni" else 0,
                                         gate_dims if u.gate else 0)
        else:
            utility = UtilityModel(
                message_shape,
                context_dim=context_dim if icfg.mode == "cdni" else 0,
                kind=u.kind,
                hidden=u.hidden,
                layers=u.layers,
                rank=u.rank,
                normalize=u.normalize,
                gate=gate_dims if u.gate else 0,
                squash_input=u.squash_input,
                candidates=candidates if u.gate and u.kind == "mlp" else None,
            )
        utility = utility.to(device)
        utility_optimizer = make_optimizer(u.optimizer, utility.parameters(), u.lr or cfg.trainer.lr,
                                           fused=cfg.trainer.fused)
    synthetic_input = synthetic_input_optimizer = None
    if icfg.synthetic_input is not None and source_shape is not None:
        s = icfg.synthetic_input
        synthetic_input = SyntheticInputModel(source_shape, message_shape, s.kind, s.hidden, s.layers)
        synthetic_input = synthetic_input.to(device)
        synthetic_input_optimizer = make_optimizer(
            cfg.trainer.optimizer, synthetic_input.parameters(), s.lr or cfg.trainer.lr,
            fused=cfg.trainer.fused,
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


def user_utility_model(u: Any, key: str, message_shape: tuple[int, ...], context_dim: int,
                       gate: int) -> nn.Module:
    """A utility model of the user's class ``u.kind`` (``package.module:Class``), built as
    ``Class(message_shape, context_dim=, gate=, **u.kwargs)``; it must be an ``nn.Module`` whose
    ``forward(message, context)`` returns ĝ shaped like the message (checked here on a zero message)."""
    cls = import_object(u.kind, key)
    try:
        model = cls(message_shape, context_dim=context_dim, gate=gate, **u.kwargs)
    except TypeError as exc:
        raise ConfigError(f"{key}: {u.kind}{message_shape} rejects its arguments ({exc})") from None
    if not isinstance(model, nn.Module) or not any(True for _ in model.parameters()):
        raise ConfigError(f"{key}: {u.kind} must build a torch.nn.Module with parameters")
    with torch.no_grad():
        probe = model(torch.zeros(2, *message_shape), torch.zeros(2, context_dim) if context_dim else None)
    if not isinstance(probe, torch.Tensor) or probe.shape != (2, *message_shape):
        got = tuple(probe.shape) if isinstance(probe, torch.Tensor) else type(probe).__name__
        raise ConfigError(f"{key}: {u.kind} returns {got} for messages of shape {(2, *message_shape)} "
                          "(ĝ must have the message's shape)")
    return model
