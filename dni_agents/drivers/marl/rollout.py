"""Playing: one synchronous episode in every environment copy with the current networks, recording what
the learner replays (observations, actions, messages as sent and heard, the channel noise and outages)."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import torch
from gymnasium import spaces

from ...config import Config, ConfigError
from .channels import hear, speaking_order
from .controls import ablation_permutation
from .env import make_copies
from .gates import actor_memory
from .parts import Channel, Episode, Group


class Player:
    """Plays synchronous episodes in ``E`` environment copies with the current networks."""

    def __init__(self, cfg: Config, groups: list[Group], channels: list[Channel], device: torch.device,
                 num_envs: int, env_workers: int | None = None) -> None:
        self.cfg, self.groups, self.channels, self.device = cfg, groups, channels, device
        # one vector environment (env.py), stepped in env_workers processes (None: marl.env_workers)
        self.envs = make_copies(cfg, num_envs, env_workers)
        self.routing = callable(getattr(self.envs, "message_sources", None))
        self.order = speaking_order(groups, channels)
        self.by_name = {g.name: g for g in groups}
        self._member_index = {g.name: {m: i for i, m in enumerate(g.members)} for g in groups}
        self._fixed_sources: dict[tuple[str, bool], torch.Tensor] = {}  # (channel, silent) -> routing

    def close(self) -> None:
        """Stop the environments' workers, if they have any (``marl.env_workers``)."""
        close = getattr(self.envs, "close", None)
        if callable(close):
            close()

    def _sources(self, ch: Channel, first: bool, alive: torch.Tensor, everyone: bool) -> torch.Tensor:
        """(copies, receivers): which sender member each receiving member hears (-1: nobody). ``everyone``:
        every copy is alive (a fixed routing is then the same tensor every step; the records only read it)."""
        receivers = self.by_name[ch.receiver].members
        E = len(alive)
        fixed = (ch.name, first)
        if everyone and fixed in self._fixed_sources:
            return self._fixed_sources[fixed]
        if first:
            out = self._fixed_sources[fixed] = torch.full((E, len(receivers)), -1, dtype=torch.long)
            return out
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
        if not everyone:
            out[~alive] = -1
        elif not self.routing:
            self._fixed_sources[fixed] = out
        return out

    def _private(self, obs: dict[str, torch.Tensor], infos: dict[str, dict], alive: torch.Tensor,
                 everyone: bool) -> torch.Tensor:
        """(copies, members) the private information of ``marl.private_info``'s agent (-1: finished)."""
        spec = self.cfg.marl.private_info
        cols = []
        for m in self.by_name[spec.agent].members:
            if spec.obs_argmax is not None:
                a, b = spec.obs_argmax
                cols.append(obs[m][:, a:b].argmax(1).cpu())
            else:
                info = infos.get(m, {}).get(spec.info)
                cols.append(torch.full((len(alive),), -1) if info is None else torch.as_tensor(info).cpu())
        out = torch.stack(cols, 1).long()
        if not everyone:
            out[~alive] = -1
        return out

    @torch.no_grad()
    def play(self, seed: int, generator: torch.Generator | None, greedy: bool = False,
             ablate: str | None = None) -> Episode:
        """One episode in every copy; ``greedy``: most likely actions and clean (discrete) channels;
        ``ablate``: every channel's messages shuffled across copies (``permute``) or silenced (``zero``)."""
        cfg, T, E = self.cfg, self.cfg.marl.max_steps, self.envs.num_envs
        perm = ablation_permutation(E, seed) if ablate == "permute" else None
        groups, channels = self.groups, self.channels
        obs, infos = self.envs.reset(seed=seed)
        obs = as_tensors(obs)
        kinds = ("obs", "actions", "logp", "values", "rewards", "probs")
        store: dict[str, dict[str, list]] = {k: {g.name: [] for g in groups} for k in kinds}
        sources = {c.name: [] for c in channels}
        messages = {c.name: [] for c in channels if c.interface is not None}
        private, alive_rows = [], []
        alive = torch.ones(E, dtype=torch.bool)
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
            live = int(alive.sum())
            if not live:
                break
            everyone = live == E
            alive_rows.append(alive)
            obs_t = {g.name: self._stack_obs(obs, g) for g in groups}
            src_t = {c.name: self._sources(c, t < c.model.delay, alive, everyone) for c in channels}
            for c in channels:
                sources[c.name].append(src_t[c.name])
            if cfg.marl.private_info is not None:
                private.append(self._private(obs, infos, alive, everyone))
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
            steps += live
            obs, r, term, trunc, infos = self.envs.step(self._env_actions(out, E))
            obs, r = as_tensors(obs), as_tensors(r)
            nothing = torch.zeros(E)
            rewards = {g.name: torch.stack([r.get(m, nothing) for m in g.members], 1) * alive[:, None]
                       for g in groups}
            done = torch.zeros(E, dtype=torch.bool)
            for a in term:
                done |= torch.as_tensor(term[a]).cpu() | torch.as_tensor(trunc[a]).cpu()
            alive = alive & ~done if t < T - 1 else torch.zeros(E, dtype=torch.bool)
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

    def _stack_obs(self, obs: dict[str, torch.Tensor], g: Group) -> torch.Tensor:
        """(copies, members, obs_dim) of a vector environment's observations (:func:`as_tensors`)."""
        E = self.envs.num_envs
        return torch.stack([obs[m].reshape(E, -1) for m in g.members], 1).to(self.device)

    def inputs(self, g: Group, obs: torch.Tensor, inbound: dict[str, torch.Tensor],
               t: int | torch.Tensor) -> torch.Tensor:
        """The network's input: the observation with each channel's message in its comm slot (or appended),
        and (``marl.time_feature``) the fraction of the episode gone, so the critic knows how much is left.
        ``t``: the step, or the steps (S,) of observations stacked in time (S, copies, members, obs_dim)."""
        extra = []
        if self.cfg.marl.time_feature:
            if isinstance(t, torch.Tensor):
                gone = (t / self.cfg.marl.max_steps).to(obs.dtype).view(-1, *([1] * (obs.dim() - 1)))
                extra.append(gone.expand(*obs.shape[:-1], 1))
            else:
                extra.append(obs.new_full((*obs.shape[:-1], 1), t / self.cfg.marl.max_steps))
        slots = []  # (start, end, message) of the channels heard in a comm slot, by start
        for c in g.inbound:
            if c.interface is None:
                continue  # rial: the environment put the message in the observation already
            if c.obs_slice is not None:
                slots.append((*c.obs_slice, inbound[c.name]))
            else:
                extra.append(inbound[c.name])
        slots.sort(key=lambda slot: slot[0])
        if any(a < b_prev for (_, b_prev, _), (a, _, _) in pairwise(slots)):  # overlapping: in order
            x = obs.clone()
            for c in g.inbound:
                if c.interface is not None and c.obs_slice is not None:
                    x[..., c.obs_slice[0]: c.obs_slice[1]] = inbound[c.name]
            pieces = [x]
        else:  # the observation around the slots, each slot's message in it: one concatenation (its
            pieces, at = [], 0  # backward hands each piece its columns, no full-width copy)
            for a, b, z in slots:
                pieces += [obs[..., at:a], z]
                at = b
            pieces.append(obs[..., at:])
        pieces = [p for p in pieces if p.shape[-1]] + extra
        return torch.cat(pieces, -1) if len(pieces) > 1 else pieces[0]

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


def as_tensors(arrays: dict[str, np.ndarray | torch.Tensor]) -> dict[str, torch.Tensor]:
    """A vector environment's per-agent arrays (numpy, or torch on its own device: ``dni_envs``' batched
    mpe2 scenarios) as float32 tensors on the CPU, where the rollout keeps its records."""
    return {a: torch.as_tensor(v).to("cpu", torch.float32) for a, v in arrays.items()}


@torch.no_grad()
def calibrate_messages(player: Player, rms: float, seed: int) -> dict[str, float]:
    """The frozen control's matched scale: scale each message head (weight and bias) so that its messages
    on the first observations of every environment copy have RMS ``rms`` per component (before any squash).
    Returns each channel's factor."""
    obs = as_tensors(player.envs.reset(seed=seed)[0])
    E = player.envs.num_envs
    factors = {}
    for g in player.groups:
        heads = [c for c in g.outbound if c.interface is not None]
        if not heads:
            continue
        x = player.inputs(g, player._stack_obs(obs, g), {c.name: torch.zeros(E, len(g.members), c.size)
                                                        for c in g.inbound if c.interface is not None}, 0)
        features, _ = g.net(x.flatten(0, 1), None)
        for c in heads:
            head, now = g.net.head(c.name), g.net.message(c.name, features, squash=False)
            factor = rms / float(now.pow(2).mean().sqrt().clamp_min(1e-8))
            head.weight.mul_(factor)
            head.bias.mul_(factor)
            factors[c.name] = factor
    return factors
