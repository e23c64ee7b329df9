"""Agents and channels from config: each network (a core ``Agent``) with the environment agents it controls,
each channel with its interface and channel model, and the core ``System`` that holds them."""

from __future__ import annotations

import fnmatch
from typing import Any

import numpy as np
import torch
from gymnasium import spaces

from ...config import Config, ConfigError, interface_config
from ...core import Agent, System
from ..common import agent_optimizer, build_interface
from .channels import channel_model
from .gates import bootstrap_size, context_size, gate_horizon, gate_size
from .parts import Channel, Group
from .policy import PolicyNet, user_body

CHECKPOINT = "checkpoint.pt"
EVAL_SEED = 1_000_003  # evaluation episodes never reuse training seeds


# ------------------------------------------------------------------------------------------ building
def build(cfg: Config, env: Any, device: torch.device) -> tuple[System, list[Group], list[Channel]]:
    """Networks, channels and the core system, as the config describes them."""
    if device.type != "cpu":  # rollouts are numpy-bound and the learner's masks live on the CPU for now
        raise ConfigError(f"device: marl runs on the CPU for now (got {cfg.device!r}; allowed: cpu)")
    torch.manual_seed(cfg.seed)
    env_agents = list(env.possible_agents)
    owner: dict[str, str] = {}
    members: dict[str, list[str]] = {}
    for i, a in enumerate(cfg.agents):
        patterns = a.members or [a.name]
        found = [e for e in env_agents if any(fnmatch.fnmatchcase(e, p) for p in patterns)]
        if not found:
            raise ConfigError(
                f"agents[{i}].members: {patterns} match no environment agent "
                f"(env agents: {', '.join(env_agents)})"
            )
        for e in found:
            if e in owner:
                raise ConfigError(f"agents[{i}].members: {e!r} already belongs to agent {owner[e]!r}")
            owner[e] = a.name
        members[a.name] = found
    missing = [e for e in env_agents if e not in owner]
    if missing:
        raise ConfigError(
            f"agents: environment agents {', '.join(missing)} have no network (add them to agents)"
        )

    obs_dims: dict[str, int] = {}
    act_spaces: dict[str, spaces.Space] = {}
    for name, group in members.items():
        obs = {env.observation_space(e).shape for e in group}
        act = {repr(env.action_space(e)) for e in group}
        if len(obs) != 1 or len(act) != 1:
            raise ConfigError(f"agents: {name} shares parameters across {group} whose spaces differ")
        obs_dims[name] = int(np.prod(next(iter(obs))))
        act_spaces[name] = env.action_space(group[0])
    _check_private_info(cfg, obs_dims)

    env_slices = getattr(env.unwrapped if hasattr(env, "unwrapped") else env, "comm_slice", None) or {}
    specs: list[tuple[str, str, str, int, tuple[int, int] | None]] = []
    sources: list[str] = []
    for i, ov in enumerate(cfg.interfaces):
        mode = interface_config(cfg, ov.sender, ov.receiver).mode
        size = ov.size or cfg.marl.message_size
        slot = env_slices.get(members[ov.receiver][0])
        slot = (slot.start, slot.stop) if slot is not None else None
        if ov.obs_slice is not None:
            obs_slice = (ov.obs_slice[0], ov.obs_slice[1])
        else:
            obs_slice = slot
        if obs_slice is not None:
            if obs_slice[1] > obs_dims[ov.receiver]:
                raise ConfigError(
                    f"interfaces[{i}].obs_slice: {list(obs_slice)} is outside {ov.receiver}'s observation "
                    f"of size {obs_dims[ov.receiver]}"
                )
            if ov.obs_slice is not None:
                _check_in_slot(i, ov.receiver, obs_slice, slot, ov.size)
            if ov.size is not None and ov.size != obs_slice[1] - obs_slice[0]:
                raise ConfigError(f"interfaces[{i}].size: {ov.size} does not fit obs_slice {list(obs_slice)}")
            size = obs_slice[1] - obs_slice[0]
        if mode == "rial":
            if not isinstance(act_spaces[ov.sender], spaces.Discrete | spaces.MultiDiscrete):
                raise ConfigError(f"interfaces[{i}].mode: rial needs a discrete action space for {ov.sender}")
            if obs_slice is None:
                raise ConfigError(f"interfaces[{i}]: rial needs the environment's comm slot (set obs_slice)")
        specs.append((ov.sender, ov.receiver, mode, size, obs_slice))
        if ov.obs_slice is not None:  # what set the message's size, for the error below
            sources.append(f"interfaces[{i}].obs_slice: {list(obs_slice)}")
        elif obs_slice is not None:
            sources.append(f"interfaces[{i}]: {ov.receiver}'s comm slot {list(obs_slice)}")
        else:
            sources.append(f"marl.message_size: {size}")
    _check_actions_fit(cfg, specs, sources, act_spaces)

    agents_cfg = {a.name: a for a in cfg.agents}
    groups: dict[str, Group] = {}
    for name, group_members in members.items():
        a = agents_cfg[name]
        out_sizes = {f"{s}->{r}": n for s, r, m, n, _ in specs if s == name and m != "rial"}
        in_extra = sum(n for s, r, m, n, sl in specs if r == name and sl is None) + int(cfg.marl.time_feature)
        if not a.policy and any(s == name and m == "rial" for s, _, m, _, _ in specs):
            raise ConfigError(f"agents: {name} sends a rial message, which is its policy: set policy: true")
        candidates = tuple(a.candidates) if a.candidates else None
        if candidates is not None and (
            len(candidates) != 2 or candidates != (getattr(act_spaces[name], "n", None), candidates[1])
            or cfg.marl.recurrent or candidates[0] * candidates[1] > obs_dims[name]
        ):
            raise ConfigError(
                f"agents: {name}.candidates {list(candidates)} must be [n, features] with a Discrete(n) "
                f"action, n*features <= its observation size ({obs_dims[name]}) and marl.recurrent false"
            )
        raw = tuple(k for k in out_sizes if channel_model(cfg, *k.split("->")).discretize)
        key = f"agents[{cfg.agents.index(a)}].network"
        net = PolicyNet(
            obs_dims[name] + in_extra, cfg.marl.hidden, cfg.marl.recurrent,
            act_spaces[name] if a.policy else None, out_sizes, candidates,
            squash=cfg.marl.message_activation == "tanh", message_gain=cfg.marl.message_init_gain,
            raw_channels=raw, body=user_body(a.network, a.network_kwargs, key) if a.network else None,
        ).to(device)
        agent = Agent(name, net, agent_optimizer(cfg, name, net.parameters()), period=a.period,
                      max_grad_norm=cfg.marl.max_grad_norm)
        groups[name] = Group(name, group_members, agent, net, a.policy, a.period, act_spaces[name],
                             obs_dims[name])

    channels: list[Channel] = []
    for sender, receiver, mode, size, obs_slice in specs:
        name = f"{sender}->{receiver}"
        ch = Channel(name, sender, receiver, mode, size, obs_slice, None,
                     channel_model(cfg, sender, receiver))
        if mode != "rial":
            r = groups[receiver]
            shape = (bootstrap_size(r, specs), gate_horizon(cfg, ch, r))
            context_dim, gate = context_size(ch, r, *shape), gate_size(r, *shape)
            ch.interface = build_interface(  # a candidate scorer's utility model scores candidates too
                cfg, sender, receiver, (size,), device, context_dim=context_dim, gate_dims=gate,
                candidates=groups[receiver].net.candidates if gate > 1 else None)
        groups[sender].outbound.append(ch)
        groups[receiver].inbound.append(ch)
        channels.append(ch)
    team_members(cfg, list(groups.values()))  # marl.teams name environment agents this env has
    system = System([g.agent for g in groups.values()], [c.interface for c in channels if c.interface],
                    on_nonfinite=cfg.trainer.on_nonfinite)
    return system, list(groups.values()), channels


def team_members(cfg: Config, groups: list[Group]) -> dict[str, list[str]]:
    """``marl.teams`` as environment agents, in the order listed: a network's name stands for every
    environment agent it controls. Raises ``ConfigError`` for a name that is neither a network nor one of
    the environment agents the networks control, and for an environment agent in two teams (also when one
    team names it and another its network)."""
    networks = {g.name: g.members for g in groups}
    env_agents = [m for g in groups for m in g.members]
    seen: dict[str, str] = {}
    out: dict[str, list[str]] = {}
    for team, names in cfg.marl.teams.items():
        out[team] = []
        for name in names:
            if name in networks:
                found = networks[name]
            elif name in env_agents:
                found = [name]
            else:
                raise ConfigError(f"marl.teams.{team}: unknown agent {name!r} (allowed: the agents "
                                  f"{', '.join(networks)} or the environment agents {', '.join(env_agents)})")
            for m in found:
                if m in seen:
                    where = "twice in this team" if seen[m] == team else f"already in team {seen[m]!r}"
                    via = "" if m == name else f" (of agent {name!r})"
                    raise ConfigError(f"marl.teams.{team}: environment agent {m!r}{via} is {where} (an agent "
                                      "plays for one team)")
                seen[m] = team
                out[team].append(m)
    return out


def _check_in_slot(i: int, receiver: str, obs_slice: tuple[int, int], slot: tuple[int, int] | None,
                   size: int | None) -> None:
    """``interfaces[i].obs_slice`` against the receiver's comm slot, where the environment declares one
    (``comm_slice``): the slot itself, or a narrower message inside it asked for with ``size`` (the rest of
    the slot keeps what the environment writes there). Anything else would replace observation entries that
    are no communication, or leave part of the sender's slot to the environment, without a word."""
    if slot is None or obs_slice == slot:
        return
    lo, hi = obs_slice
    width, slot_width = hi - lo, slot[1] - slot[0]
    inside = slot[0] <= lo and hi <= slot[1]
    if inside and size == width:
        return
    key, slot_text = f"interfaces[{i}].obs_slice", f"[{slot[0]}, {slot[1]})"
    fits = f"allowed: [{slot[0]}, {slot[1]}] or no obs_slice"
    if inside:
        raise ConfigError(
            f"{key}: [{lo}, {hi}] is {width} wide, but {receiver}'s comm slot (the environment's "
            f"comm_slice) is {slot_text}, {slot_width} wide ({fits}; for a {width}-wide message inside the "
            f"slot on purpose, set interfaces[{i}].size={width} too)")
    raise ConfigError(
        f"{key}: [{lo}, {hi}] is not inside {receiver}'s comm slot {slot_text} (the environment's "
        f"comm_slice): the message would replace observation entries that are no communication ({fits})")


def _check_actions_fit(cfg: Config, specs: list[tuple[str, str, str, int, tuple[int, int] | None]],
                       sources: list[str], act_spaces: dict[str, spaces.Space]) -> None:
    """A network without a policy (``policy: false``) acts with its first message: the argmax of a
    ``Discrete(n)`` action over n components, or a ``Box`` of the message's size. A message of another
    size would leave its action at 0 for ever; that is an error unless the interface sets the size
    (``interfaces[i].size``: a narrow channel on purpose)."""
    for i, a in enumerate(cfg.agents):
        if a.policy:
            continue
        sent = [(j, n) for j, (s, _, m, n, _) in enumerate(specs) if s == a.name and m != "rial"]
        if not sent:
            continue
        j, size = sent[0]
        if cfg.interfaces[j].size == size:
            continue
        space = act_spaces[a.name]
        if isinstance(space, spaces.Discrete):
            need = int(space.n)
        elif isinstance(space, spaces.Box) and len(space.shape) == 1:
            need = int(space.shape[0])
        else:
            raise ConfigError(f"agents[{i}].policy: false makes {a.name}'s message its action, but its "
                              f"action space {space} is neither Discrete nor a 1-d Box (allowed: policy: "
                              "true)")
        if size != need:
            raise ConfigError(
                f"{sources[j]} makes {specs[j][0]}->{specs[j][1]}'s message {size} wide, but {a.name} "
                f"(agents[{i}], policy: false) acts with its message and its action space {space} takes "
                f"{need} (allowed: a {need}-wide message, or policy: true; for {size} on purpose, with the "
                f"action left at 0, set interfaces[{j}].size={size})")


def _check_private_info(cfg: Config, obs_dims: dict[str, int]) -> None:
    """``marl.private_info.obs_argmax`` must lie inside its agent's observation: a range past its end
    slices nothing, and the mutual information would be reported from an empty slice."""
    private = cfg.marl.private_info
    if private is None or private.obs_argmax is None:
        return
    lo, hi = private.obs_argmax
    size = obs_dims[private.agent]  # a config agent (config.py), so it has environment agents (above)
    if not 0 <= lo < hi <= size:
        raise ConfigError(
            f"marl.private_info.obs_argmax: {[lo, hi]} is outside {private.agent}'s observation of size "
            f"{size} (allowed: [start, stop) with 0 <= start < stop <= {size})"
        )
