"""The floor's networks: our PolicyNet's layers under PolicyNet's names (so it starts from our weights), the
utility models (linear or MLP, gated, candidate-wise as the config's), and the groups and channels a config
describes."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from gymnasium import spaces
from torch import nn

from ...config import Config, ConfigError, interface_config
from ...drivers.marl.gates import bootstrap_size, gate_horizon


def _mlp(in_dim: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh())


class FloorPolicy(nn.Module):
    """PolicyNet's layers under PolicyNet's names (its state dict loads as it is) and nothing else: two tanh
    layers for the actor and the critic (the critic reads its input detached), a GRUCell after each for
    memory, the actor's head (one score per candidate for a candidate scorer), one message head per channel
    on the actor's features, running return statistics for the normalised value."""

    def __init__(self, in_dim: int, hidden: int, recurrent: bool, space: spaces.Space | None,
                 messages: dict[str, int], candidates: tuple[int, int] | None) -> None:
        super().__init__()
        self.hidden, self.candidates, self.acts = hidden, candidates, space is not None
        self.discrete = isinstance(space, spaces.Discrete)
        scored = in_dim - candidates[0] * candidates[1] + candidates[1] if candidates else in_dim
        self.actor_body = _mlp(scored, hidden)
        self.actor_rnn = nn.GRUCell(hidden, hidden) if recurrent else None
        if self.acts:
            n_out = int(space.n) if self.discrete else int(math.prod(space.shape))
            self.actor = nn.Linear(hidden, 1 if candidates else n_out)
            if not self.discrete:
                self.log_std = nn.Parameter(torch.zeros(n_out))
            self.critic_body = _mlp(in_dim, hidden)
            self.critic_rnn = nn.GRUCell(hidden, hidden) if recurrent else None
            self.critic = nn.Linear(hidden, 1)
            for name in ("return_mean", "return_var", "return_count"):
                self.register_buffer(name, torch.ones(()) if name == "return_var" else torch.zeros(()))
        self.messages = nn.ModuleDict({k.replace("->", "__to__"): nn.Linear(hidden, n)
                                       for k, n in messages.items()})

    def forward(self, x: torch.Tensor, h: tuple | None) -> tuple[torch.Tensor, torch.Tensor | None, tuple]:
        """(actor features, critic features, memory) of rows ``x``."""
        ha, hc = h if h is not None else (None, None)
        if self.candidates:
            n, f = self.candidates
            rest = x[:, n * f:].unsqueeze(1).expand(-1, n, -1)
            fa = self.actor_body(torch.cat([x[:, : n * f].reshape(-1, n, f), rest], -1))  # (rows, n, H)
        else:
            fa = self.actor_body(x)
        if self.actor_rnn is not None:
            fa = ha = self.actor_rnn(fa, ha)
        fc = None
        if self.acts:
            fc = self.critic_body(x.detach())
            if self.critic_rnn is not None:
                fc = hc = self.critic_rnn(fc, hc)
        return fa, fc, (ha, hc)

    def message(self, channel: str, fa: torch.Tensor) -> torch.Tensor:
        """The message before the channel's squash (a candidate scorer speaks from its mean feature)."""
        return self.messages[channel.replace("->", "__to__")](fa.mean(-2) if self.candidates else fa)

    def head(self, fa: torch.Tensor) -> torch.Tensor:
        """Action logits (discrete) or the action mean."""
        return self.actor(fa).squeeze(-1) if self.candidates else self.actor(fa)


class FloorUtility(nn.Module):
    """U(message[, context]) -> ĝ: a linear map or a 2-layer ReLU MLP, its last layer zero at the start; with
    a gate of ``k`` entries (the context's tail) ĝ = U(...)·gate, one column per gate entry; candidate-wise
    (a candidate scorer's receiver) one shared MLP per candidate gives that candidate's column."""

    def __init__(self, size: int, context: int, gate: int, kind: str, hidden: int, squash: bool,
                 candidates: tuple[int, int] | None) -> None:
        super().__init__()
        self.size, self.context, self.gate, self.squash = size, context, gate, squash
        self.candidates = candidates
        in_dim = size + context - (candidates[0] * candidates[1] - candidates[1] if candidates else 0)
        out = size if candidates else size * max(gate, 1)
        if kind == "linear":
            self.net = nn.Sequential(nn.Linear(in_dim, out))
        else:
            self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, out))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)
        self.closed_form = kind == "linear" and not gate  # its regression gradient is one product

    def inputs(self, h: torch.Tensor, ctx: torch.Tensor | None) -> torch.Tensor:
        x = torch.tanh(h) if self.squash else h
        return x if ctx is None else torch.cat([x, ctx[:, : self.context]], 1)

    def forward(self, h: torch.Tensor, ctx: torch.Tensor | None) -> torch.Tensor:
        rows = h.shape[0]
        x = self.inputs(h, ctx)
        if self.candidates:
            n, f = self.candidates
            rest = torch.cat([x[:, : self.size], x[:, self.size + n * f:]], 1).unsqueeze(1).expand(-1, n, -1)
            cands = x[:, self.size: self.size + n * f].reshape(rows, n, f)
            out = self.net(torch.cat([rest, cands], -1)).transpose(1, 2)  # (rows, size, n)
        else:
            out = self.net(x).view(rows, self.size, max(self.gate, 1))
        if self.gate:
            return (out @ ctx[:, self.context:].unsqueeze(-1)).squeeze(-1)
        return out.squeeze(-1)


@dataclass
class FloorGroup:
    name: str
    members: int
    net: FloorPolicy
    policy: bool
    lr: float
    max_grad_norm: float


@dataclass
class FloorChannel:
    name: str
    sender: str
    receiver: str
    mode: str
    size: int
    obs_slice: tuple[int, int] | None
    noise: float
    discretize: bool
    squash: bool  # a tanh message head (not a discretised channel's: tanh is the channel's there)
    delay: int
    scale: float
    utility: FloorUtility | None = None
    horizon: int = 0
    bootstrap: list[str] = field(default_factory=list)  # the receiver's own synthetic channels (gate tail)


@dataclass
class Floor:
    cfg: Config
    groups: list[FloorGroup]
    channels: list[FloorChannel]
    blocks: list[tuple[list[str], bool]]  # groups in the order they are replayed; True: steps in time
    optimizer: torch.optim.Optimizer
    device: torch.device
    generator: torch.Generator


def _blocks(groups: list[FloorGroup], channels: list[FloorChannel]) -> list[tuple[list[str], bool]]:
    """Groups in replay order: each block after the blocks it hears from; a block steps in time when it is a
    loop of channels (or one network that hears itself) or has memory, else it is one batched forward.
    Inside a stepped block a delay-0 sender comes before its receiver."""
    names = [g.name for g in groups]
    hears = {n: {c.sender for c in channels if c.receiver == n} for n in names}
    reach = {n: set(hears[n]) for n in names}  # every group n depends on
    for _ in names:
        for n in names:
            reach[n] |= set().union(*(reach[s] for s in reach[n]))
    blocks, placed = [], set()
    while len(placed) < len(names):
        n = next(n for n in names if n not in placed and all(s in placed or n in reach[s] for s in reach[n]))
        block = [m for m in names if m == n or (m in reach[n] and n in reach[m])]
        same_step = {m: {c.sender for c in channels if c.receiver == m and c.delay == 0} for m in block}
        block.sort(key=lambda m: len(same_step[m] & set(block)))  # delay-0 senders first (no loop of them)
        recurrent = any(g.net.actor_rnn is not None for g in groups if g.name in block)
        blocks.append((block, len(block) > 1 or n in hears[n] or recurrent))
        placed.update(block)
    return blocks


def make_floor(cfg: Config, ours_groups: list, ours_channels: list, device: torch.device) -> Floor:
    """The floor of the networks and channels ``build`` made for ``cfg`` (their sizes; the policies start
    from their weights, the utility models from zero as ours)."""
    mc = cfg.marl
    groups = []
    for g in ours_groups:
        if g.period != 1 or g.net.actor_body.__class__ is not nn.Sequential:
            raise ConfigError(f"bench speed: the floor has period 1 and the default body only ({g.name})")
        in_dim = g.net.actor_body[0].in_features if not g.net.candidates else g.net.critic_body[0].in_features
        net = FloorPolicy(in_dim, mc.hidden, mc.recurrent, g.action_space if g.policy else None,
                          {c.name: c.size for c in g.outbound if c.interface is not None}, g.net.candidates)
        net.load_state_dict(g.net.state_dict())
        lr = next((a.lr for a in cfg.agents if a.name == g.name and a.lr is not None), cfg.trainer.lr)
        groups.append(FloorGroup(g.name, len(g.members), net.to(device), g.policy, lr, mc.max_grad_norm))
    channels, utility_lrs = [], []
    for c in ours_channels:
        if c.interface is None:
            continue  # rial: the environment carries the message
        icfg = interface_config(cfg, c.sender, c.receiver)
        ch = FloorChannel(c.name, c.sender, c.receiver, c.mode, c.size, c.obs_slice, c.model.noise,
                          c.model.discretize, mc.message_activation == "tanh" and not c.model.discretize,
                          c.model.delay, icfg.scale)
        if c.mode in ("dni", "cdni"):
            u, receiver = icfg.utility, next(g for g in ours_groups if g.name == c.receiver)
            context = gate = 0
            if c.mode == "cdni":  # sizes as comm.context_size: what the receiver has, then the gate
                ch.horizon = gate_horizon(cfg, c, receiver)
                ch.bootstrap = [o.name for o in receiver.outbound if o.mode in ("dni", "cdni")]
                logits = 0
                if receiver.policy:
                    space = receiver.action_space
                    logits = int(space.n) if isinstance(space, spaces.Discrete) else 1
                specs = [(o.sender, o.receiver, o.mode, o.size, None) for o in ours_channels]
                gate = (logits + bootstrap_size(receiver, specs)) * (ch.horizon + 1)
                memory = mc.hidden if mc.recurrent else 0
                continuous = (0 if isinstance(receiver.action_space, spaces.Discrete) or not receiver.policy
                              else int(math.prod(receiver.action_space.shape)))
                context = receiver.obs_dim + c.size + memory + continuous
                if not u.gate:  # an ungated model sees the gate's entries as more context
                    context, gate = context + gate, 0
            if u.kind not in ("linear", "mlp") or u.layers != 2 or u.rank or u.normalize:
                raise ConfigError(f"bench speed: the floor's utility model is linear or a 2-layer MLP "
                                  f"({c.name})")
            candidates = receiver.net.candidates if gate > 1 and receiver.net.candidates else None
            ch.utility = FloorUtility(c.size, context, gate, u.kind, u.hidden, u.squash_input, candidates)
            ch.utility.to(device)
            utility_lrs.append((ch.utility, u.lr or cfg.trainer.lr))
        channels.append(ch)
    params = [{"params": list(g.net.parameters()), "lr": g.lr} for g in groups]
    params += [{"params": list(u.parameters()), "lr": lr} for u, lr in utility_lrs]
    optimizer = torch.optim.Adam(params, fused=True)
    generator = torch.Generator().manual_seed(cfg.seed)
    return Floor(cfg, groups, channels, _blocks(groups, channels), optimizer, device, generator)


