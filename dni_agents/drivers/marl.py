"""Multi-agent communication on PettingZoo: agents and channels from config, PPO, DNI between agents.

How a message travels (top to bottom, as the code below does it):

* Every network (a core ``Agent``; it may control several environment agents, which then share its
  parameters) reads its observation and writes one message per outbound channel.
* The environment is numpy and cannot carry gradients, so the framework carries the message tensor
  itself: at the next step it replaces the receiver's communication slice of the observation
  (``obs_slice``) or is appended to it. Environments whose routing changes (the switch riddle: the bulb
  goes to whoever enters the room next) say who hears whom through ``message_sources()``.
* Each update plays one episode in every environment copy (all copies start together, so ``period``,
  recurrence and exact resume are simple), then runs PPO with GAE. The learner replays the episode
  step by step; each channel is a core :class:`~dni_agents.core.Interface`: the sender gets ĝ from the
  receiver's utility model at once (``dni``/``cdni``), the true gradient as a graph edge (``backprop``,
  DIAL-style: the two agents update in one tick), or nothing (``none``). ``rial`` channels are not
  interfaces at all: the message is the sender's discrete environment action, learned by RL alone.

Nothing here knows what DNI is beyond ``tick.send`` / ``tick.receive``: the mechanics are the core's.
"""

from __future__ import annotations

import fnmatch
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from tqdm import tqdm

from ..config import Config, ConfigError, interface_config, load_config
from ..core import Agent, ChannelModel, Interface, System
from .comm_metrics import (  # noqa: F401
    comm_metrics,
    entropy_bits,
    log_projector,
    message_symbols,
    mutual_information_bits,
)
from .common import (
    apply_checkpoint,
    build_interface,
    eval_hint,
    load_checkpoint,
    load_system,
    log_interfaces,
    make_optimizer,
    mean_stats,
    open_run,
    resolve_device,
    save_checkpoint,
    write_report,
)
from .marl_comm import (
    FidelityHistory,
    Sensitivity,
    ablation_permutation,
    actor_memory,
    bootstrap_size,
    calibrate_messages,
    channel_model,
    channel_stats,
    context_size,
    gate_horizon,
    gate_size,
    hear,
    normalized_advantages,
    route,
    sender_context,
    sensitivities,
    speaking_order,
    transmitted,
)
from .marl_env import DirectParallel, make_copies, make_env  # noqa: F401 (DirectParallel: tests)
from .marl_policy import PolicyNet, user_body
from .stop import StopRequest

CHECKPOINT = "checkpoint.pt"
EVAL_SEED = 1_000_003  # evaluation episodes never reuse training seeds


@dataclass
class Group:
    """One network (core agent) and the environment agents it controls."""

    name: str
    members: list[str]
    agent: Agent
    net: PolicyNet
    policy: bool
    period: int
    action_space: spaces.Space
    obs_dim: int
    inbound: list[Channel] = field(default_factory=list)
    outbound: list[Channel] = field(default_factory=list)


@dataclass
class Channel:
    name: str
    sender: str
    receiver: str
    mode: str
    size: int
    obs_slice: tuple[int, int] | None  # None: appended to the receiver's observation
    interface: Interface | None  # None for rial (the environment carries the message)
    model: ChannelModel = field(default_factory=ChannelModel)  # noise, discretisation, delay


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
    for i, ov in enumerate(cfg.interfaces):
        mode = interface_config(cfg, ov.sender, ov.receiver).mode
        size = ov.size or cfg.marl.message_size
        if ov.obs_slice is not None:
            obs_slice = (ov.obs_slice[0], ov.obs_slice[1])
        elif members[ov.receiver][0] in env_slices:
            s = env_slices[members[ov.receiver][0]]
            obs_slice = (s.start, s.stop)
        else:
            obs_slice = None
        if obs_slice is not None:
            if obs_slice[1] > obs_dims[ov.receiver]:
                raise ConfigError(
                    f"interfaces[{i}].obs_slice: {list(obs_slice)} is outside {ov.receiver}'s observation "
                    f"of size {obs_dims[ov.receiver]}"
                )
            if ov.size is not None and ov.size != obs_slice[1] - obs_slice[0]:
                raise ConfigError(f"interfaces[{i}].size: {ov.size} does not fit obs_slice {list(obs_slice)}")
            size = obs_slice[1] - obs_slice[0]
        if mode == "rial":
            if not isinstance(act_spaces[ov.sender], spaces.Discrete | spaces.MultiDiscrete):
                raise ConfigError(f"interfaces[{i}].mode: rial needs a discrete action space for {ov.sender}")
            if obs_slice is None:
                raise ConfigError(f"interfaces[{i}]: rial needs the environment's comm slot (set obs_slice)")
        specs.append((ov.sender, ov.receiver, mode, size, obs_slice))

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
        optimizer = make_optimizer(cfg.trainer.optimizer, net.parameters(), a.lr or cfg.trainer.lr,
                                   fused=cfg.trainer.fused)
        agent = Agent(name, net, optimizer, period=a.period, max_grad_norm=cfg.marl.max_grad_norm)
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
    system = System([g.agent for g in groups.values()], [c.interface for c in channels if c.interface],
                    on_nonfinite=cfg.trainer.on_nonfinite)
    return system, list(groups.values()), channels


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


# ------------------------------------------------------------------------------------------ playing
@dataclass
class Episode:
    """One synchronous episode of every environment copy (time-major, ``T`` steps at most)."""

    obs: dict[str, torch.Tensor]  # group -> (T, E, n, obs_dim)
    actions: dict[str, torch.Tensor]  # group -> (T, E, n) or (T, E, n, A)
    logp: dict[str, torch.Tensor]
    values: dict[str, torch.Tensor]
    rewards: dict[str, torch.Tensor]  # group -> (T, E, n)
    alive: torch.Tensor  # (T, E): the copy was still running at step t
    sources: dict[str, torch.Tensor]  # channel -> (T, E, n_receivers): sender member heard at t (-1: none)
    messages: dict[str, torch.Tensor]  # channel -> (T, E, n_senders, size), as sent
    private: torch.Tensor | None  # (T, E, n_senders) private info of the private_info agent
    steps: int  # environment steps played (alive copies only)
    noise: dict[str, torch.Tensor] = field(default_factory=dict)  # noisy channel -> ε of each message sent
    heard: dict[str, torch.Tensor] = field(default_factory=dict)  # channel -> (T, E, n_receivers, size)
    probs: dict[str, torch.Tensor] = field(default_factory=dict)  # discrete group -> (T, E, n, actions)
    memory: dict[str, torch.Tensor] = field(default_factory=dict)  # recurrent group -> actor state before t
    outage: dict[str, torch.Tensor] = field(default_factory=dict)  # channel -> (E,) 1: up this episode

    @property
    def length(self) -> int:
        return self.alive.shape[0]

    def decisions(self, period: int) -> list[int]:
        """The steps at which a network of this ``period`` acts (all copies start together)."""
        return list(range(0, self.length, period))


class Player:
    """Plays synchronous episodes in ``E`` environment copies with the current networks."""

    def __init__(self, cfg: Config, groups: list[Group], channels: list[Channel], device: torch.device,
                 num_envs: int) -> None:
        self.cfg, self.groups, self.channels, self.device = cfg, groups, channels, device
        self.envs = make_copies(cfg, num_envs)  # one vector environment (marl_env.py)
        self.routing = callable(getattr(self.envs, "message_sources", None))
        self.order = speaking_order(groups, channels)
        self.by_name = {g.name: g for g in groups}
        self._member_index = {g.name: {m: i for i, m in enumerate(g.members)} for g in groups}

    def _sources(self, ch: Channel, first: bool, alive: np.ndarray) -> torch.Tensor:
        """(copies, receivers): which sender member each receiving member hears (-1: nobody)."""
        receivers = self.by_name[ch.receiver].members
        E = len(alive)
        if first:
            return torch.full((E, len(receivers)), -1, dtype=torch.long)
        senders = self.by_name[ch.sender].members
        if self.routing:
            index = self._member_index[ch.sender]
            rows = [[index.get(heard.get(r), -1) if heard.get(r) is not None else -1 for r in receivers]
                    for heard in self.envs.message_sources()]
            out = torch.as_tensor(rows, dtype=torch.long)
        elif len(senders) == 1:
            out = torch.zeros(E, len(receivers), dtype=torch.long)
        elif len(senders) == len(receivers):
            out = torch.arange(len(receivers)).expand(E, -1).clone()
        else:
            raise ConfigError(
                f"interfaces: {ch.name} connects {len(senders)} senders to {len(receivers)} receivers; the "
                "environment must say who hears whom (message_sources())"
            )
        out[torch.as_tensor(~alive)] = -1
        return out

    def _private(self, obs: dict[str, np.ndarray], infos: dict[str, dict], alive: np.ndarray) -> torch.Tensor:
        """(copies, members) the private information of ``marl.private_info``'s agent (-1: finished)."""
        spec = self.cfg.marl.private_info
        cols = []
        for m in self.by_name[spec.agent].members:
            if spec.obs_argmax is not None:
                a, b = spec.obs_argmax
                cols.append(np.argmax(obs[m][:, a:b], axis=1))
            else:
                cols.append(np.asarray(infos.get(m, {}).get(spec.info, np.full(len(alive), -1))))
        out = torch.as_tensor(np.stack(cols, 1).astype(np.int64))
        out[torch.as_tensor(~alive)] = -1
        return out

    @torch.no_grad()
    def play(self, seed: int, generator: torch.Generator | None, greedy: bool = False,
             ablate: str | None = None) -> Episode:
        """One episode in every copy; ``greedy``: most likely actions and clean (discrete) channels;
        ``ablate``: every channel's messages shuffled across copies (``permute``) or silenced (``zero``)."""
        cfg, T, E = self.cfg, self.cfg.marl.max_steps, self.envs.num_envs
        perm = ablation_permutation(E, seed) if ablate == "permute" else None
        groups, channels = self.groups, self.channels
        obs_np, infos = self.envs.reset(seed=seed)
        kinds = ("obs", "actions", "logp", "values", "rewards", "probs")
        store: dict[str, dict[str, list]] = {k: {g.name: [] for g in groups} for k in kinds}
        sources = {c.name: [] for c in channels}
        messages = {c.name: [] for c in channels if c.interface is not None}
        private, alive_rows = [], []
        alive = np.ones(E, dtype=bool)
        hidden: dict[str, torch.Tensor | None] = {g.name: None for g in groups}
        held: dict[str, dict[str, torch.Tensor]] = {g.name: {} for g in groups}
        sent: dict[str, torch.Tensor] = {}
        noise: dict[str, torch.Tensor | None] = {}
        noises: dict[str, list[torch.Tensor]] = {c.name: [] for c in channels if c.model.noise and not greedy}
        up = {c.name: c.model.sample_outage(E, generator) for c in channels if c.model.outage and not greedy}
        heard_rows: dict[str, list[torch.Tensor]] = {c.name: [] for c in channels if c.interface is not None}
        memory: dict[str, list[torch.Tensor]] = {}
        steps = 0
        for t in range(T):
            if not alive.any():
                break
            alive_rows.append(torch.as_tensor(alive.copy()))
            obs_t = {g.name: self._stack_obs(obs_np, g) for g in groups}
            src_t = {c.name: self._sources(c, t < c.model.delay, alive) for c in channels}
            for c in channels:
                sources[c.name].append(src_t[c.name])
            if cfg.marl.private_info is not None:
                private.append(self._private(obs_np, infos, alive))
            out, heard = {}, {}
            before, noise_before = dict(sent), dict(noise)  # what was sent at t-1 (delay 1)
            for g in self.order:
                for c in g.inbound:
                    if c.interface is not None:
                        early = c.model.delay == 1
                        heard[c.name] = hear(c, (before if early else sent).get(c.name),
                                             (noise_before if early else noise).get(c.name), src_t[c.name], E,
                                             not greedy, ablate, perm, self.device, up.get(c.name))
                        heard_rows[c.name].append(heard[c.name])
                x = self.inputs(g, obs_t[g.name], heard, t)
                if t % g.period == 0:
                    if g.net.recurrent:  # what a cDNI context shows of a receiver's memory
                        memory.setdefault(g.name, []).append(actor_memory(g, hidden[g.name], E))
                    features, hidden[g.name] = g.net(x.flatten(0, 1), hidden[g.name])
                    h = {c.name: g.net.message(c.name, features).view(E, len(g.members), c.size)
                         for c in g.outbound if c.interface is not None}
                    if g.policy:
                        dist = g.net.dist(features)
                        if greedy:
                            action = dist.probs.argmax(-1) if g.net.discrete else dist.mean
                        elif g.net.discrete:
                            action = torch.multinomial(dist.probs, 1, generator=generator).squeeze(-1)
                        else:
                            jitter = torch.randn(dist.mean.shape, generator=generator)
                            action = dist.mean + dist.stddev * jitter
                        logp = dist.log_prob(action)
                        logp = logp if g.net.discrete else logp.sum(-1)
                        value = g.net.value(features)
                        h.update(action=action.view(E, len(g.members), *action.shape[1:]),
                                 logp=logp.view(E, -1), value=value.view(E, -1))
                        if g.net.discrete:
                            h["probs"] = dist.probs.view(E, len(g.members), -1)
                    held[g.name] = h
                out[g.name] = held[g.name]
                for c in g.outbound:
                    if c.interface is not None:
                        sent[c.name] = held[g.name][c.name]
                        messages[c.name].append(held[g.name][c.name])
                        if c.name in noises:
                            noise[c.name] = c.model.sample_noise(tuple(sent[c.name].shape), generator)
                            noises[c.name].append(noise[c.name])
            steps += int(alive.sum())
            obs_np, r, term, trunc, infos = self.envs.step(self._env_actions(out, E))
            rewards = {g.name: torch.as_tensor(np.stack([r.get(m, np.zeros(E)) for m in g.members], 1),
                                               dtype=torch.float32) * torch.as_tensor(alive)[:, None]
                       for g in groups}
            done = np.zeros(E, dtype=bool)
            for a in term:
                done |= term[a] | trunc[a]
            alive = alive & ~done if t < T - 1 else np.zeros(E, dtype=bool)
            for g in groups:
                store["obs"][g.name].append(obs_t[g.name])
                store["rewards"][g.name].append(rewards[g.name])
                if g.policy:
                    for k in ("actions", "logp", "values", "probs"):
                        key = {"actions": "action", "logp": "logp", "values": "value", "probs": "probs"}[k]
                        if key in out[g.name]:
                            store[k][g.name].append(out[g.name][key])
        stack = {k: {g: torch.stack(v) for g, v in d.items() if v} for k, d in store.items()}
        return Episode(
            stack["obs"], stack["actions"], stack["logp"], stack["values"], stack["rewards"],
            torch.stack(alive_rows), {c: torch.stack(v) for c, v in sources.items()},
            {c: torch.stack(v) for c, v in messages.items()},
            torch.stack(private) if private else None, steps,
            {c: torch.stack(v) for c, v in noises.items()},
            {c: torch.stack(v) for c, v in heard_rows.items()}, stack["probs"],
            {g: torch.stack(v) for g, v in memory.items()}, up,
        )

    def _stack_obs(self, obs: dict[str, np.ndarray], g: Group) -> torch.Tensor:
        """(copies, members, obs_dim) of a vector environment's observations."""
        E = self.envs.num_envs
        rows = np.stack([obs[m].reshape(E, -1) for m in g.members], 1).astype(np.float32, copy=False)
        return torch.as_tensor(rows, device=self.device)

    def inputs(self, g: Group, obs: torch.Tensor, inbound: dict[str, torch.Tensor], t: int) -> torch.Tensor:
        """The network's input: the observation with each channel's message in its comm slot (or appended),
        and (``marl.time_feature``) the fraction of the episode gone, so the critic knows how much is left."""
        x = obs.clone()
        extra = []
        if self.cfg.marl.time_feature:
            extra.append(obs.new_full((*obs.shape[:-1], 1), t / self.cfg.marl.max_steps))
        for c in g.inbound:
            if c.interface is None:
                continue  # rial: the environment put the message in the observation already
            z = inbound[c.name]
            if c.obs_slice is not None:
                x[..., c.obs_slice[0]: c.obs_slice[1]] = z
            else:
                extra.append(z)
        return torch.cat([x, *extra], -1) if extra else x

    def _env_actions(self, out: dict[str, dict[str, torch.Tensor]], copies: int) -> dict[str, np.ndarray]:
        """Each environment agent's action in every copy: its sampled action, or (no policy) its message in
        the form the environment expects (argmax for a discrete action, the vector for a box)."""
        actions: dict[str, np.ndarray] = {}
        for g in self.groups:
            space = g.action_space
            if g.policy:
                chosen = out[g.name]["action"].cpu().numpy()
                if not isinstance(space, spaces.Discrete):
                    chosen = np.clip(chosen, space.low, space.high)
            else:
                msg = next((out[g.name][c.name] for c in g.outbound if c.interface is not None), None)
                if isinstance(space, spaces.Discrete) and msg is not None and msg.shape[-1] == space.n:
                    chosen = msg.argmax(-1).cpu().numpy()
                elif isinstance(space, spaces.Box) and msg is not None and msg.shape[-1] == space.shape[-1]:
                    chosen = msg.cpu().numpy().reshape(*msg.shape[:2], *space.shape)
                    chosen = np.clip(chosen, space.low, space.high)
                else:
                    chosen = np.zeros((copies, len(g.members), *space.shape), dtype=space.dtype)
            for i, m in enumerate(g.members):
                actions[m] = chosen[:, i]
        return actions


# ------------------------------------------------------------------------------------------ learning
def advantages(ep: Episode, g: Group, gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE over the network's decision steps (every ``period`` env steps; rewards in between are summed)."""
    k = g.period
    decisions = ep.decisions(k)
    rewards = ep.rewards[g.name] * ep.alive[..., None]
    values = ep.values[g.name][decisions]
    alive = ep.alive[decisions].float()[..., None]
    block = torch.stack([rewards[d: d + k].sum(0) for d in decisions])
    adv = torch.zeros_like(block)
    last = torch.zeros_like(block[0])
    for i in reversed(range(len(decisions))):
        next_alive = alive[i + 1] if i + 1 < len(decisions) else torch.zeros_like(alive[0])
        next_value = values[i + 1] if i + 1 < len(decisions) else torch.zeros_like(values[0])
        delta = block[i] + gamma**k * next_value * next_alive - values[i]
        last = delta + gamma**k * lam * next_alive * last
        adv[i] = last
    return adv * alive, (adv + values) * alive


def ppo_update(
    cfg: Config, system: System, groups: list[Group], player: Player,
    ep: Episode, generator: torch.Generator, clock: int, track: bool = False,
) -> tuple[dict[str, dict[str, float]], int]:
    """PPO epochs over minibatches of environment copies; each minibatch is one tick of every network,
    replaying the episode so that messages cross the channels' interfaces with gradients. ``track``:
    measure ĝ's fidelity in the first epoch (held out: no utility model has seen this episode's targets)."""
    mc = cfg.marl
    gae = {g.name: advantages(ep, g, mc.gamma, mc.gae_lambda) for g in groups if g.policy}
    for g in groups:
        if g.policy:
            g.net.observe_returns(gae[g.name][1][ep.alive[ep.decisions(g.period)]])
    E, T = ep.alive.shape[1], ep.length
    stats: dict[str, dict[str, list[float]]] = {g.name: {} for g in groups if g.policy}
    ticking = system.coupled()  # networks joined by backprop channels update in one tick
    for epoch in range(mc.epochs):
        system.track_stats = track and epoch == 0
        order = torch.randperm(E, generator=generator)
        for mb in order.chunk(min(mc.minibatches, E)):
            sens = sensitivities(cfg, groups, player.order, ep, mb, gae)  # the cDNI gates
            clock += 1
            base = clock * (T + 1)
            with ExitStack() as stack:
                ticks = {}
                for members in ticking:
                    t_ = stack.enter_context(system.tick(members, clock))
                    ticks.update(dict.fromkeys(members, t_))
                out = replay(groups, player, ep, mb, ticks, base, sens)
                for g in groups:
                    if g.policy:
                        loss, parts = ppo_loss(mc, g, ep, mb, out[g.name], gae[g.name])
                        ticks[g.name].add_loss(loss)
                        for k, v in parts.items():
                            stats[g.name].setdefault(k, []).append(v)
            system.check_settled()
    system.track_stats = False
    return {g: {k: sum(v) / len(v) for k, v in s.items()} for g, s in stats.items()}, clock


def replay(
    groups: list[Group], player: Player, ep: Episode, mb: torch.Tensor, ticks: dict, base: int,
    sens: Sensitivity,
) -> dict[str, list[torch.Tensor]]:
    """The episode again, with gradients: the message of step t goes out through the interface as the
    message of clock step ``base + t`` and is heard at ``t + delay`` through the noise the rollout drew.
    Returns each acting network's features per decision."""
    T, B = ep.length, len(mb)
    hidden: dict[str, torch.Tensor | None] = {g.name: None for g in groups}
    held: dict[str, dict[str, torch.Tensor]] = {g.name: {} for g in groups}
    features_out: dict[str, list[torch.Tensor]] = {g.name: [] for g in groups}
    # A network that hears no channel and has no memory does not depend on the step order: one batched
    # forward over all its decisions, sliced per step below (the same computation in fewer calls).
    batched: dict[str, list[torch.Tensor]] = {}
    for g in groups:
        if g.net.rnn_free and not any(c.interface is not None for c in g.inbound):
            steps = ep.decisions(g.period)
            x = torch.stack([player.inputs(g, ep.obs[g.name][t, mb], {}, t) for t in steps])
            features = g.net(x.flatten(0, 2), None)[0]
            batched[g.name] = list(features.view(len(steps), -1, features.shape[-1]).unbind(0))
    for t in range(T):
        for g in player.order:
            tick = ticks[g.name]
            inbound = {}
            for c in g.inbound:
                if c.interface is None:
                    continue
                sent_at = t - c.model.delay
                heard = None
                if sent_at >= 0:  # the message as heard: the sender put it through the channel
                    heard = tick.receive(c.interface, step=base + sent_at).view(B, -1, c.size)
                inbound[c.name] = route(heard, ep.sources[c.name][t, mb], c.size, B, player.device)
            if t % g.period == 0:
                if g.name in batched:
                    features = batched[g.name][t // g.period]
                else:
                    x = player.inputs(g, ep.obs[g.name][t, mb], inbound, t)
                    features, hidden[g.name] = g.net(x.flatten(0, 1), hidden[g.name])
                features_out[g.name].append(features)
                held[g.name] = {c.name: g.net.message(c.name, features)
                                for c in g.outbound if c.interface is not None}
            for c in g.outbound:
                if c.interface is None or t + c.model.delay >= T:
                    continue  # a message nobody will hear is not sent
                # The channel (noise, squash) is on the sender's side of the interface: what crosses is
                # what the receiver hears, so ĝ is the receiver's gradient for it and the sender's own
                # backward applies the channel's derivative exactly (a saturated symbol gets none, as
                # with backprop; a utility model left to learn that factor let the messages drift).
                h = held[g.name][c.name]
                out = transmitted(c, ep, t, mb, h.view(B, -1, c.size)).view_as(h)
                context = None
                if c.mode == "cdni":
                    context = sender_context(c, player.by_name[c.receiver], ep, t, mb, len(g.members),
                                             out.detach().view(B, -1, c.size), sens)
                tick.send(c.interface, out, context, step=base + t)
    return features_out


def ppo_loss(mc: Any, g: Group, ep: Episode, mb: torch.Tensor, features: list[torch.Tensor],
             gae: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped PPO objective + value loss − entropy bonus over the decisions of live copies."""
    adv, returns = gae
    decisions = ep.decisions(g.period)
    feats = torch.stack(features)  # (D, B*n, H)
    D, B, n = len(decisions), len(mb), len(g.members)
    mask = ep.alive[decisions][:, mb].float().unsqueeze(-1).expand(D, B, n).reshape(D, B * n)
    dist = g.net.dist(feats)
    action = ep.actions[g.name][decisions][:, mb].reshape(D, B * n, *ep.actions[g.name].shape[3:])
    logp = dist.log_prob(action)
    entropy = dist.entropy()
    if not g.net.discrete:
        logp, entropy = logp.sum(-1), entropy.sum(-1)
    old = ep.logp[g.name][decisions][:, mb].reshape(D, B * n)
    count = mask.sum().clamp_min(1)
    a = normalized_advantages(adv[:, mb].reshape(D, B * n), mask)
    ratio = (logp - old).exp()
    pg = torch.max(-a * ratio, -a * ratio.clamp(1 - mc.clip, 1 + mc.clip))
    value = g.net.normalized_value(feats)
    target = (returns[:, mb].reshape(D, B * n) - g.net.return_mean) / g.net.return_var.sqrt()
    v_loss = 0.5 * (value - target) ** 2
    pg_loss, v_loss, ent = ((x * mask).sum() / count for x in (pg, v_loss, entropy))
    loss = pg_loss + mc.vf_coef * v_loss - mc.ent_coef * ent
    with torch.no_grad():
        kl = (((ratio - 1) - (logp - old)) * mask).sum() / count
    return loss, {"policy_loss": pg_loss.item(), "value_loss": v_loss.item(), "entropy": ent.item(),
                  "approx_kl": float(kl)}


# ------------------------------------------------------------------------------------------ metrics
def episode_metrics(cfg: Config, ep: Episode, groups: list[Group]) -> dict[str, float]:
    """Mean episode return per environment agent, and the success rate (last reward >= success_reward)."""
    out: dict[str, float] = {}
    last_rewards = []
    last = (ep.alive.sum(0) - 1).clamp_min(0)  # index of each copy's last step
    for g in groups:
        r = ep.rewards[g.name] * ep.alive[..., None]
        for i, m in enumerate(g.members):
            out[f"return/{m}"] = float(r[..., i].sum(0).mean())
        last_rewards.append(ep.rewards[g.name][last, torch.arange(len(last))])
    out["return/mean"] = sum(v for k, v in out.items()) / max(len(out), 1)
    if cfg.marl.success_reward is not None:
        final = torch.cat(last_rewards, 1).mean(1)
        out["success_rate"] = float((final >= cfg.marl.success_reward).float().mean())
    return out


# ------------------------------------------------------------------------------------------ train / eval
def train(
    cfg: Config, run_dir: Path, resume: Path | None = None, log: bool = True, progress: bool = True,
    stop_at: int | None = None, stop: StopRequest | None = None,
) -> dict:
    """Train ``cfg``; return the final evaluation. ``stop_at`` ends early (as a crash would), for tests;
    ``stop``: on SIGINT/SIGTERM checkpoint at the next update boundary and raise Interrupted."""
    threads = torch.get_num_threads()
    if cfg.marl.threads:  # small policy networks: more intra-op threads cost more than they give
        torch.set_num_threads(cfg.marl.threads)
    try:
        return _train(cfg, run_dir, resume, log, progress, stop_at, stop or StopRequest())
    finally:
        torch.set_num_threads(threads)


def _train(
    cfg: Config, run_dir: Path, resume: Path | None, log: bool, progress: bool, stop_at: int | None,
    stop: StopRequest,
) -> dict:
    device = resolve_device(cfg.device)
    mc, tc = cfg.marl, cfg.trainer
    env = make_env(cfg)
    system, groups, channels = build(cfg, env, device)
    player = Player(cfg, groups, channels, device, mc.num_envs)
    start, clock = 0, 0

    def restore(state: dict) -> int:
        nonlocal start, clock
        load_system(system, state["system"])
        start, clock = int(state["update"]), int(state["clock"])
        return start  # updates are logged at ``update``: the crashed run's from here on are dropped

    run_dir, logger = open_run(cfg, run_dir, resume, log, device, CHECKPOINT, restore)
    private_agent = mc.private_info.agent if mc.private_info else None
    end = tc.steps if stop_at is None else min(stop_at, tc.steps)
    bar = tqdm(total=end, initial=start, desc=cfg.name, disable=not progress, leave=False, unit="update")
    env_steps, seconds, recent = 0, 0.0, []
    fidelity, curve = FidelityHistory(), []  # curve: (environment steps, return) on measured updates
    if mc.message_rms is not None and start == 0:  # the frozen control's scale (a resumed run has it)
        calibrate_messages(player, mc.message_rms, seed=cfg.seed * 100_000 * mc.num_envs)

    def save(update: int) -> Path | None:
        if not log:
            return None
        save_checkpoint(Path(run_dir) / CHECKPOINT,
                        {"update": update, "clock": clock, "system": system.state_dict()})
        return Path(run_dir) / CHECKPOINT

    for update in range(start, end):
        stop.check(update, save, bar, logger)
        t0 = time.perf_counter()
        generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + update)
        ep = player.play(seed=(cfg.seed * 100_000 + update) * mc.num_envs, generator=generator)
        measure = update % cfg.log.every == 0 or update == tc.steps - 1
        log_now = log and measure
        losses, clock = ppo_update(cfg, system, groups, player, ep, generator, clock, track=measure)
        seconds += time.perf_counter() - t0
        env_steps += ep.steps
        metrics = episode_metrics(cfg, ep, groups)
        recent = (recent + [metrics["return/mean"]])[-20:]
        if measure:
            curve.append(((update + 1) * mc.num_envs * mc.max_steps, metrics["return/mean"]))
            usage = channel_stats(ep, channels)
            fidelity.add(update, usage)  # the messages' scale, for the frozen control
        if log_now:
            logger.scalars("episode", metrics, update)
            for name, parts in losses.items():
                logger.agent(name, parts, update)
            fidelity.add(update, log_interfaces(logger, system, update))
            for name, m in comm_metrics(ep, channels, private_agent, mc.mi_resolution).items():
                logger.scalars(f"comm/{name}", m, update)
            for name, m in usage.items():
                logger.scalars(f"channel/{name}", m, update)
            logger.scalar("perf/env_steps_per_s", env_steps / max(seconds, 1e-9), update)
            logger.scalar("perf/env_steps", (update + 1) * mc.num_envs * mc.max_steps, update)
            bar.set_postfix(ret=f"{sum(recent) / len(recent):.2f}")
        elif measure:
            fidelity.add(update, {k: mean_stats(v) for k, v in system.drain_stats().items()})
        if log and update % cfg.log.histogram_every == 0:
            for name, msgs in ep.messages.items():
                logger.message_histogram(name, msgs[ep.alive], update)
        if tc.checkpoint_every and (update + 1) % tc.checkpoint_every == 0:
            save(update + 1)
        bar.update(1)
    bar.close()
    if end < tc.steps:
        logger.close()
        return {}
    result = evaluate_system(cfg, groups, channels, device, episodes=mc.eval_episodes)
    result.update(updates=tc.steps, env_steps_per_s=env_steps / max(seconds, 1e-9), train_seconds=seconds)
    result.update(fidelity.second_half(tc.steps))  # held-out ĝ fidelity over the second half of training
    if any(c.interface is not None for c in channels):  # the controls: does the receiver use the message?
        for key, how in (("ablated_return", "permute"), ("silenced_return", "zero")):
            result[key] = evaluate_system(cfg, groups, channels, device, mc.eval_episodes, how)["mean_return"]
    result["curve"] = curve
    if log:
        logger.scalars("eval", {k: v for k, v in result.items() if isinstance(v, float)}, tc.steps)
        if cfg.log.embedding_samples and "_episode" in result:
            log_projector(cfg, logger, result["_episode"], channels, tc.steps)
        save(tc.steps)
        result["run_dir"] = str(run_dir)
    result.pop("_episode", None)
    logger.close()
    return result


def evaluate_system(cfg: Config, groups: list[Group], channels: list[Channel], device: torch.device,
                    episodes: int, ablate: str | None = None) -> dict[str, Any]:
    """Greedy play (most likely action, clean channels) for ``episodes`` episodes; ``ablate``: with the
    messages shuffled across copies (``permute``) or silenced (``zero``)."""
    player = Player(cfg, groups, channels, device, min(episodes, 250))
    eps = []
    while sum(e.alive.shape[1] for e in eps) < episodes:
        eps.append(player.play(seed=EVAL_SEED + 1000 * len(eps), generator=None, greedy=True, ablate=ablate))
    metrics: dict[str, list[float]] = {}
    private_agent = cfg.marl.private_info.agent if cfg.marl.private_info else None
    for e in eps:
        for k, v in episode_metrics(cfg, e, groups).items():
            metrics.setdefault(k, []).append(v)
        for ch, m in comm_metrics(e, channels, private_agent, cfg.marl.mi_resolution).items():
            for k, v in m.items():
                metrics.setdefault(f"{ch}/{k}", []).append(v)
    out: dict[str, Any] = {k: sum(v) / len(v) for k, v in metrics.items()}
    out["mean_return"] = out.pop("return/mean")
    out["_episode"] = eps[0]
    return out


def evaluate(run_dir: Path, ablate: str | None = None) -> dict:
    """``dni-agents eval RUN_DIR [--ablate permute|zero]``: replay the trained agents greedily; return,
    success, communication."""
    run_dir = Path(run_dir)
    cfg = load_config(str(run_dir / "config.yaml"))
    device = resolve_device(cfg.device)
    system, groups, channels = build(cfg, make_env(cfg), device)
    state = load_checkpoint(run_dir / CHECKPOINT, device)

    def restore(state: dict) -> int:
        load_system(system, state["system"])
        return int(state["update"])

    update = apply_checkpoint(run_dir / CHECKPOINT, state, restore, eval_hint(run_dir))
    result = evaluate_system(cfg, groups, channels, device, episodes=cfg.marl.eval_episodes, ablate=ablate)
    result.pop("_episode", None)
    return {"run_dir": str(run_dir), "update": update, **({"ablate": ablate} if ablate else {}), **result}


# ------------------------------------------------------------------------------------------ benchmark
METHODS: dict[str, list[str]] = {
    m: [f"interface_defaults.mode={m}"] for m in ("none", "rial", "backprop", "dni", "cdni")
}
# In rial the speaker's message is its environment action, so it needs a policy.
METHODS["rial"].append("agents.0.policy=true")


def bench(quick: bool = False, out: Path | None = None, seeds: int | None = None, overrides: list[str] = (),
          only: list[str] | None = None) -> dict:
    """``dni-agents bench marl``: speaker–listener with every channel mode, several seeds; JSON to ``out``."""
    seeds = seeds or (2 if quick else 3)
    methods = [m for m in METHODS if not only or m in only]
    if not methods:
        raise ConfigError(f"--only: {','.join(only)} matches no method (methods: {', '.join(METHODS)})")
    extra = ["trainer.steps=150", "marl.eval_episodes=250"] if quick else []
    results: list[dict] = []
    report = {"benchmark": "marl", "quick": quick, "overrides": list(overrides), "results": results}

    for method in methods:
        for seed in range(seeds):
            cfg = load_config("speaker_listener", [*METHODS[method], *extra, *overrides, f"seed={seed}"])
            t0 = time.perf_counter()
            m = train(cfg, Path("runs") / cfg.name, log=False, progress=False)
            mi = next((v for k, v in m.items() if k.endswith("/mi_bits")), None)
            results.append({
                "method": method, "env": cfg.marl.env, "seed": seed, "mean_return": m["mean_return"],
                "success_rate": m.get("success_rate"), "mi_bits": mi, "env_steps_per_s": m["env_steps_per_s"],
                "wall_s": time.perf_counter() - t0, "updates": cfg.trainer.steps,
                "env_steps": cfg.trainer.steps * cfg.marl.num_envs * cfg.marl.max_steps,
            })
            tqdm.write(f"{method:>9} seed {seed}: return {m['mean_return']:.2f}, "
                       f"success {m.get('success_rate')}, MI {mi}, {m['env_steps_per_s']:.0f} env steps/s")
            write_report(out, report)
    summary: dict[str, dict[str, float]] = {}
    for method in methods:
        rows = [r for r in results if r["method"] == method]
        summary[method] = {k: sum(r[k] for r in rows) / len(rows) for k in ("mean_return", "env_steps_per_s")}
        mis = [r["mi_bits"] for r in rows if r["mi_bits"] is not None]
        summary[method]["mi_bits"] = sum(mis) / len(mis) if mis else None
    report["summary"] = summary
    write_report(out, report)
    return {"summary": summary, "out": str(out) if out else None}
