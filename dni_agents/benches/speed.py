"""``dni-agents bench speed``: how fast the marl driver learns, against a plain-PyTorch floor.

For every bundled marl job (:data:`CONFIGS`), on one thread, in process CPU time (``time.process_time``;
wall time with CUDA synchronisation for a floor on a GPU), the methods alternating in rounds:

``ours_env_steps_per_cpu_s``
    environment steps per CPU-second of training, playing and learning (``Player.play`` + ``ppo_update``,
    built exactly as ``train.py`` builds them, no logging), after a few warm-up updates.
``ours_learn_ms``
    CPU milliseconds of one ``ppo_update`` (all epochs and minibatches) on one fixed played episode.
``floor_learn_ms``
    the same update of a plain-PyTorch *floor* (:func:`floor_update`) on the same episode: no System,
    Interface or Tick, networks of the config's sizes (PolicyNet's layers under PolicyNet's names,
    starting from our networks' weights), PPO with the config's epochs, minibatches, clip and
    coefficients. ``learn_ratio`` = ours / floor: the framework's cost.
``floor_env_steps_per_cpu_s``
    environment steps per CPU-second of the floor's learning plus *our* rollout (``Player.play``, timed in
    the same rounds): the floor has no rollout of its own, so this isolates learning.

What the floor does per minibatch (the whole update is :func:`floor_update`, top to bottom):

* one batched forward over every step of the episode per network, in the order the channels allow
  (a sender before its receivers); a network with memory (GRU) or on a loop of channels (each hears the
  other: ``reference``; one network that hears itself: ``switch_riddle``) steps in time, one call a step;
* every channel by hand: the message through the channel's noise (the rollout's ε), squash and outage;
  ``backprop`` hands the receiver the message itself (one graph); ``none`` a detached copy; ``dni`` /
  ``cdni`` a fresh leaf ``z``, and the sender gets ĝ = U(message[, context]) through the surrogate
  ``Σ message·ĝ`` in the same backward. U is a linear map (zero-initialised) or an MLP, gated and
  candidate-wise as the config's utility model is. The cDNI context is what the receiving member had
  (its observation, what it heard, its memory) and the gate: the receiver's −∂loss/∂logits taken from its
  loss by ``torch.autograd.grad`` (a pass from the loss to the logits only; ours computes the same
  sensitivity in closed form at ratio 1 from the rollout's probabilities), and — where the receiver sends
  on a synthetic channel itself — the ĝ of its own message from *one pass* of U with a zero gate (ours
  makes it step by step from the end of the episode: a simplification of the floor's);
* one backward for all networks and every ĝ; then each utility model regressed onto ``z.grad`` (per-
  example units, as the core's Interface): a plain linear U by its closed-form gradient (no graph), an
  MLP by a second backward through U alone; one gradient clip per network and one Adam step for all
  (``torch.optim.Adam(fused=True)``, param groups per network and utility model: the fused kernel was
  the fastest on this CPU for these sizes, 3.5 ms an epoch of speaker_listener's layers against 4.1 ms
  with ``foreach``, as ``trainer.fused`` notes). With one minibatch the copies are not shuffled (no
  gather; PPO's loss does not depend on their order).

``dni-agents bench speed device=cuda`` runs the floor on the GPU (wall clock); ours stays on the CPU
(the marl driver is CPU-only). ``--seeds N`` sets the number of alternating rounds.

``time_to_success`` (digits_referential, not in ``--quick``): one full ``train(cfg, log=False)`` run and
the result's ``time_to_success`` (the driver's held-out greedy evaluation every ``trainer.eval_every``
updates): ``games`` and ``train_cpu_s`` at success rate 0.9 (null if not reached), every threshold's
point, and the run's own CPU seconds (evaluations included).
"""

from __future__ import annotations

import math
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from gymnasium import spaces
from torch import nn

from ..config import Config, ConfigError, interface_config, load_config
from ..drivers.marl.build import build
from ..drivers.marl.env import make_env
from ..drivers.marl.gates import bootstrap_size, gate_horizon
from ..drivers.marl.learn import ppo_update
from ..drivers.marl.rollout import Episode, Player
from ..runtime.loop import step_generator
from ..runtime.report import Report
from ..runtime.run import resolve_device

CONFIGS = ("digits_referential", "speaker_listener", "speaker_listener_2bit", "referential", "reference",
           "reference_2bit", "crypto", "switch_riddle", "switch_riddle_noisy")
QUICK_CONFIGS = ("speaker_listener", "digits_referential")
SUCCESS_CONFIG, SUCCESS_AT = "digits_referential", 0.9  # part (d): time and games to held-out success
# (warm-up updates, alternating rounds, updates per method and round)
FULL, QUICK = (3, 3, 10), (1, 2, 2)


# ------------------------------------------------------------------------------------------ the floor
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


@dataclass
class Replayed:
    """A minibatch replayed with gradients: per network its features per step, per channel what was sent."""

    actor: dict[str, torch.Tensor] = field(default_factory=dict)  # (T, B·n, ...)
    critic: dict[str, torch.Tensor] = field(default_factory=dict)
    sent: dict[str, torch.Tensor] = field(default_factory=dict)  # channel -> (S, B, senders, size), graph
    leaves: dict[str, list[torch.Tensor]] = field(default_factory=dict)  # synthetic: the receivers' z
    # what the receiving members hear: (T, B, receivers, size), or one such tensor per step when stepping
    heard: dict[str, torch.Tensor | list[torch.Tensor]] = field(default_factory=dict)


def replay(floor: Floor, ep: dict, mb: torch.Tensor | slice, B: int) -> Replayed:
    """The minibatch's episode with gradients (``mb``: its ``B`` copies): each block of networks in one
    batched forward over all steps (or stepping in time), each channel's messages through the channel and
    handed on as its mode says."""
    T = ep["T"]
    by_name = {g.name: g for g in floor.groups}
    out = Replayed()
    for c in floor.channels:  # silence until a message is heard
        n_recv = by_name[c.receiver].members
        out.heard[c.name] = [torch.zeros(B, n_recv, c.size, device=floor.device)] * T
        out.leaves[c.name], sent = [], []
        out.sent[c.name] = sent  # type: ignore[assignment]  # a list per step until stacked below

    def inputs(g: FloorGroup, steps: slice) -> torch.Tensor:
        """(S, B, n, in): the observation (and time feature) with each message in its slot or appended."""
        x = ep["inputs"][g.name][steps, mb]
        pieces, at, appended = [], 0, []
        for c in sorted((c for c in floor.channels if c.receiver == g.name),
                        key=lambda c: c.obs_slice[0] if c.obs_slice else x.shape[-1]):
            heard = out.heard[c.name]
            z = heard[steps] if isinstance(heard, torch.Tensor) else torch.stack(heard[steps])
            if c.obs_slice is None:
                appended.append(z)
            else:
                pieces += [x[..., at: c.obs_slice[0]], z]
                at = c.obs_slice[1]
        return torch.cat([*pieces, x[..., at:], *appended], -1) if pieces or appended else x

    def send(g: FloorGroup, fa: torch.Tensor, start: int) -> None:
        """The messages of the steps from ``start`` (fa: (S, B·n, ...)) through their channels."""
        for c in (c for c in floor.channels if c.sender == g.name):
            steps = min(fa.shape[0], T - c.delay - start)  # a message nobody will hear is not sent
            if steps <= 0:
                continue
            h = g.net.message(c.name, fa[:steps]).view(steps, B, g.members, c.size)
            h = torch.tanh(h) if c.squash else h
            if c.noise and c.name in ep["noise"]:
                h = h + c.noise * ep["noise"][c.name][start: start + steps, mb]
            h = torch.tanh(h) if c.discretize else h
            if c.name in ep["outage"]:
                h = h * ep["outage"][c.name][mb].view(1, B, 1, 1)
            if c.mode == "backprop":
                z = h
            elif c.mode == "none":
                z = h.detach()
            else:
                z = h.detach().requires_grad_()
                out.leaves[c.name].append(z)
            out.sent[c.name].append(h)
            # route: receiving member i hears sender member sources[i] (-1: nobody)
            src = ep["sources"][c.name][start + c.delay: start + c.delay + steps, mb]  # (S, B, n_recv)
            padded = torch.cat([z, z.new_zeros(steps, B, 1, c.size)], 2)
            index = torch.where(src < 0, g.members, src).unsqueeze(-1).expand(-1, -1, -1, c.size)
            heard = padded.gather(2, index)
            if steps == T - c.delay:  # every step at once
                out.heard[c.name] = torch.cat([out.heard[c.name][0].expand(c.delay, -1, -1, -1), heard])
            else:
                out.heard[c.name][start + c.delay: start + c.delay + steps] = list(heard.unbind(0))

    for block, stepped in floor.blocks:
        if not stepped:
            g = by_name[block[0]]
            x = inputs(g, slice(0, T))
            fa, fc, _ = g.net(x.flatten(0, 2), None)
            out.actor[g.name] = fa.view(T, B * g.members, *fa.shape[1:])
            out.critic[g.name] = fc.view(T, B * g.members, -1) if fc is not None else None
            send(g, out.actor[g.name], 0)
            continue
        memory: dict[str, tuple | None] = dict.fromkeys(block)
        per_step: dict[str, list] = {n: [] for n in block}
        for t in range(T):
            for name in block:
                g = by_name[name]
                fa, fc, memory[name] = g.net(inputs(g, slice(t, t + 1)).flatten(0, 2), memory[name])
                per_step[name].append((fa, fc))
                send(g, fa.unsqueeze(0), t)
        for name in block:
            out.actor[name] = torch.stack([fa for fa, _ in per_step[name]])
            critic = [fc for _, fc in per_step[name]]
            out.critic[name] = torch.stack(critic) if critic[0] is not None else None
    out.sent = {k: torch.cat(v) for k, v in out.sent.items() if v}
    return out


def cdni_context(floor: Floor, ep: dict, mb: torch.Tensor, c: FloorChannel, heard: torch.Tensor,
                 sens: dict[str, torch.Tensor], boot: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per message sent (rows: step × copy × sender member) what the receiving member has when it hears it:
    its observation, the message as heard, its memory, a continuous action; then the gate: per decision
    from that one through ``horizon`` more, its −∂loss/∂logits and the ĝ of what it sends itself."""
    S, B, n_send = heard.shape[:3]
    when = slice(c.delay, c.delay + S)
    src = ep["sources"][c.name][when, mb]  # (S, B, n_recv)
    match = src.unsqueeze(2) == torch.arange(n_send, device=src.device).view(1, 1, -1, 1)  # (S,B,send,recv)
    heard_by = match.any(-1, keepdim=True)
    member = match.float().argmax(-1, keepdim=True)

    def pick(x: torch.Tensor, offset: int = 0) -> torch.Tensor:  # (T, B, n_recv, k) at when+offset
        x = torch.cat([x, x.new_zeros(offset, *x.shape[1:])]) if offset else x
        x = x[c.delay + offset: c.delay + offset + S]
        return x.gather(2, member.expand(-1, -1, -1, x.shape[-1])) * heard_by

    parts = [pick(ep["obs"][c.receiver][:, mb]), heard * heard_by]
    if c.receiver in ep["memory"]:
        parts.append(pick(ep["memory"][c.receiver][:, mb]))
    if c.receiver in ep["continuous"]:
        parts.append(pick(ep["actions"][c.receiver][:, mb]))
    for k in range(c.horizon + 1):  # the gate (an ungated model sees these entries as context)
        if c.receiver in sens:
            parts.append(pick(sens[c.receiver], k))
        for other in c.bootstrap:
            g_hat = boot.get(other)
            if g_hat is None:  # not known yet (the contexts of the one-pass ĝ itself): zeros
                size = next(o.size for o in floor.channels if o.name == other)
                g_hat = heard.new_zeros(ep["T"], B, src.shape[-1], size)
            else:
                g_hat = torch.cat([g_hat, g_hat.new_zeros(ep["T"] - len(g_hat), *g_hat.shape[1:])])
            parts.append(pick(g_hat, k))
    return torch.cat(parts, -1).flatten(0, 2)


def prepare(floor: Floor, ep: Episode) -> dict:
    """The episode's tensors on the floor's device, as plain dicts, and each network's input without the
    messages: its observation and (``marl.time_feature``) the fraction of the episode gone."""
    d, mc = floor.device, floor.cfg.marl
    continuous = {g.name for g in floor.groups if g.policy and not g.net.discrete}
    inputs = {}
    for name, obs in ep.obs.items():
        obs = obs.to(d)
        if mc.time_feature:
            t = torch.arange(len(obs), device=d, dtype=obs.dtype) / mc.max_steps
            obs = torch.cat([obs, t.view(-1, 1, 1, 1).expand(*obs.shape[:-1], 1)], -1)
        inputs[name] = obs
    return {
        "inputs": inputs,
        "T": ep.length, "alive": ep.alive.to(d).float(),
        **{key: {k: v.to(d) for k, v in getattr(ep, key).items()}
           for key in ("obs", "actions", "logp", "values", "rewards", "sources", "noise", "outage",
                       "memory")},
        "continuous": continuous,
    }


def floor_update(floor: Floor, episode: Episode) -> dict[str, Any]:
    """One PPO update of the floor on a played episode (CleanRL's shape): GAE, then epochs of minibatches,
    each one replay, one backward for every network and channel, the utility models' regression and one
    Adam step. Returns the PPO loss per epoch (mean over minibatches) and the largest |ratio − 1| of the
    first minibatch (0 when the floor replays the policy that played)."""
    mc, ep = floor.cfg.marl, prepare(floor, episode)
    T, E = ep["alive"].shape
    alive = ep["alive"]
    policies = [g for g in floor.groups if g.policy]

    # 1. advantages (GAE) and returns, and the running return statistics the value is normalised by
    advantages, returns = {}, {}
    for g in policies:
        rewards, values = ep["rewards"][g.name] * alive[..., None], ep["values"][g.name]
        adv, last = torch.zeros_like(values), torch.zeros_like(values[0])
        for t in reversed(range(T)):
            next_alive = alive[t + 1, :, None] if t + 1 < T else torch.zeros_like(alive[0, :, None])
            next_value = values[t + 1] if t + 1 < T else torch.zeros_like(values[0])
            delta = rewards[t] + mc.gamma * next_value * next_alive - values[t]
            last = adv[t] = delta + mc.gamma * mc.gae_lambda * next_alive * last
        advantages[g.name], returns[g.name] = adv * alive[..., None], (adv + values) * alive[..., None]
        batch = returns[g.name][alive.bool()].flatten()
        net, n = g.net, batch.numel()
        total = net.return_count + n
        delta = batch.mean() - net.return_mean
        m2 = (net.return_var * net.return_count + batch.var(unbiased=False) * n
              + delta**2 * net.return_count * n / total)
        net.return_mean += delta * n / total
        net.return_var.copy_((m2 / total).clamp_min(1e-4))
        net.return_count.copy_(total)

    # 2. epochs of minibatches of environment copies
    losses, first_ratio = [], None
    synthetic = [c for c in floor.channels if c.utility is not None]
    for _ in range(mc.epochs):
        epoch_loss = []
        batches: list = [slice(None)]  # one minibatch: every copy, in order (no gather)
        if min(mc.minibatches, E) > 1:
            batches = torch.randperm(E, generator=floor.generator).to(floor.device).chunk(mc.minibatches)
        for mb in batches:
            B = E if isinstance(mb, slice) else len(mb)
            out = replay(floor, ep, mb, B)
            loss, logits, ppo_loss = 0.0, {}, []
            for g in policies:  # clipped PPO + value loss − entropy bonus over the live decisions
                mask = alive[:, mb].repeat_interleave(g.members, 1)  # (T, B·n)
                count = mask.sum().clamp_min(1)
                head = g.net.head(out.actor[g.name])
                actions = ep["actions"][g.name]
                action = actions[:, mb].reshape(T, B * g.members, *actions.shape[3:])
                if g.net.discrete:
                    logits[g.name] = head
                    logp_all = head - head.logsumexp(-1, keepdim=True)
                    logp = logp_all.gather(-1, action.unsqueeze(-1)).squeeze(-1)
                    entropy = -(logp_all.exp() * logp_all).sum(-1)
                else:
                    log_std = g.net.log_std.expand_as(head)
                    logp = (-((action - head) ** 2) / (2 * (2 * log_std).exp()) - log_std
                            - 0.5 * math.log(2 * math.pi)).sum(-1)
                    entropy = (0.5 + 0.5 * math.log(2 * math.pi) + log_std).sum(-1)
                adv = advantages[g.name][:, mb].reshape(T, -1)
                mean = (adv * mask).sum() / count
                adv = (adv - mean) / ((((adv - mean) ** 2 * mask).sum() / count).sqrt() + 1e-8)
                ratio = (logp - ep["logp"][g.name][:, mb].reshape(T, -1)).exp()
                pg = torch.max(-adv * ratio, -adv * ratio.clamp(1 - mc.clip, 1 + mc.clip))
                target = (returns[g.name][:, mb].reshape(T, -1) - g.net.return_mean) / g.net.return_var.sqrt()
                value = g.net.critic(out.critic[g.name]).squeeze(-1)
                v_loss = 0.5 * (value - target) ** 2
                g_loss = ((pg + mc.vf_coef * v_loss - mc.ent_coef * entropy) * mask).sum() / count
                loss = loss + g_loss
                ppo_loss.append(g_loss.detach())
                if first_ratio is None:
                    first_ratio = float(((ratio.detach() - 1).abs() * mask).max())

            # the synthetic channels: ĝ now, through the surrogate Σ message·ĝ in the same backward
            cdni = [c for c in synthetic if c.mode == "cdni"]
            sens = {}
            for g in (g for g in policies if any(c.receiver == g.name for c in cdni)):
                if g.name in logits:  # −∂loss/∂logits, from the loss
                    grad = torch.autograd.grad(loss, logits[g.name], retain_graph=True)[0]
                    sens[g.name] = -grad.view(T, B, g.members, -1)
                else:  # a continuous policy: its advantage
                    sens[g.name] = advantages[g.name][:, mb].unsqueeze(-1)
            boot: dict[str, torch.Tensor] = {}
            if any(c.bootstrap for c in cdni):  # the ĝ a receiver's own messages get: one pass
                with torch.no_grad():
                    for c in synthetic:
                        h = out.sent[c.name]
                        ctx = (cdni_context(floor, ep, mb, c, h, sens, {}) if c.mode == "cdni" else None)
                        rows = h.shape[1] * h.shape[2]
                        boot[c.name] = c.utility(h.flatten(0, 2), ctx).view_as(h) * c.scale / rows
            predictions = {}
            for c in synthetic:
                h = out.sent[c.name]
                ctx = cdni_context(floor, ep, mb, c, h.detach(), sens, boot) if c.mode == "cdni" else None
                rows = h.shape[1] * h.shape[2]  # per-example units: U predicts rows × the batch-mean gradient
                u_in = c.utility.inputs(h.detach().flatten(0, 2), ctx) if c.utility.closed_form else None
                with torch.set_grad_enabled(not c.utility.closed_form):
                    prediction = c.utility(h.detach().flatten(0, 2), ctx)
                predictions[c.name] = (prediction, u_in, rows)
                loss = loss + (h.flatten(0, 2) * prediction.detach() * (c.scale / rows)).sum()

            floor.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            epoch_loss.append(torch.stack(ppo_loss).sum())

            # the utility models learn from the true gradients: z.grad, in per-example units
            for c in synthetic:
                prediction, u_in, rows = predictions[c.name]
                true = torch.cat([z.grad if z.grad is not None else torch.zeros_like(z)
                                  for z in out.leaves[c.name]])  # the receivers' gradients for the messages
                error = prediction - true.flatten(0, 2) * rows
                # loss Σ_rows w·‖error‖² / (size·Σw); w: 0 for a copy whose channel was down (outage)
                weighted, rows_weight = error, float(len(error))
                if c.name in ep["outage"]:
                    w = ep["outage"][c.name][mb].repeat_interleave(true.shape[2]).repeat(true.shape[0])
                    weighted, rows_weight = error * w[:, None], w.sum().clamp_min(1e-12)
                norm = 2 / (c.size * rows_weight)
                if c.utility.closed_form:  # its gradient for ĝ = W·x + b, by hand: no graph
                    layer = c.utility.net[0]
                    layer.weight.grad = norm * weighted.T @ u_in
                    layer.bias.grad = norm * weighted.sum(0)
                else:  # a second, small backward: through U alone
                    (0.5 * norm * (weighted * error).sum()).backward()
            for g in floor.groups:
                nn.utils.clip_grad_norm_(g.net.parameters(), g.max_grad_norm, foreach=True)
            floor.optimizer.step()
        losses.append(float(torch.stack(epoch_loss).mean()))
    return {"loss": losses, "first_ratio_dev": first_ratio}


# ------------------------------------------------------------------------------------------ measuring
@dataclass
class Ours:
    """Our driver, built as ``train.py`` builds it."""

    cfg: Config
    system: Any
    groups: list
    channels: list
    player: Player
    update: int = 0
    clock: int = 0
    generator: torch.Generator | None = None  # this update's (train.py: one for playing and learning)

    def play(self) -> Episode:
        self.generator = step_generator(self.cfg.seed, self.update)
        return self.player.play(seed=(self.cfg.seed * 100_000 + self.update) * self.cfg.marl.num_envs,
                                generator=self.generator)

    def learn(self, ep: Episode) -> None:
        if self.generator is None:
            self.generator = step_generator(self.cfg.seed, self.update)
        _, self.clock = ppo_update(self.cfg, self.system, self.groups, self.player, ep, self.generator,
                                   self.clock)
        self.update, self.generator = self.update + 1, None


def build_ours(cfg: Config) -> Ours:
    env = make_env(cfg)
    system, groups, channels = build(cfg, env, torch.device("cpu"))
    return Ours(cfg, system, groups, channels, Player(cfg, groups, channels, torch.device("cpu"),
                                                       cfg.marl.num_envs))


def clock_for(device: torch.device) -> Callable[[], float]:
    """Process CPU time on the CPU; wall time after a synchronisation on a GPU."""
    if device.type == "cuda":
        def wall() -> float:
            torch.cuda.synchronize(device)
            return time.perf_counter()
        return wall
    return time.process_time


def machine() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def measure(name: str, quick: bool, overrides: list[str], rounds: int | None) -> dict[str, Any]:
    """Part (a)-(c) of one config: the methods alternating in rounds; medians over the rounds."""
    warmup, n_rounds, n = QUICK if quick else FULL
    n_rounds = rounds or n_rounds
    cfg = load_config(name, [*overrides, "device=cpu"])  # ours: the marl driver is CPU-only
    floor_device = resolve_device(load_config(name, list(overrides)).device)
    ours = build_ours(cfg)
    floor = make_floor(cfg, ours.groups, ours.channels, floor_device)
    fixed = ours.play()  # the episode both learners learn from in (b) and (c)
    for _ in range(warmup):
        ours.learn(ours.play())
        ours.learn(fixed)
        floor_update(floor, fixed)
    tick, floor_tick = time.process_time, clock_for(floor_device)
    full, play, learn, floor_learn, steps = [], [], [], [], []
    for _ in range(n_rounds):
        t_play = t_learn = 0.0
        round_steps = 0
        for _ in range(n):  # (a) ours: play + learn
            t0 = tick()
            ep = ours.play()
            t1 = tick()
            ours.learn(ep)
            t_play, t_learn = t_play + t1 - t0, t_learn + tick() - t1
            round_steps += ep.steps
        full.append(round_steps / (t_play + t_learn))
        play.append(t_play / n)
        steps.append(round_steps / n)
        t0 = tick()
        for _ in range(n):  # (b) ours: learning alone, on the fixed episode
            ours.learn(fixed)
        learn.append((tick() - t0) / n)
        t0 = floor_tick()
        for _ in range(n):  # (c) the floor, on the same episode
            floor_update(floor, fixed)
        floor_learn.append((floor_tick() - t0) / n)
    mc = cfg.marl
    ours_ms, floor_ms = 1000 * statistics.median(learn), 1000 * statistics.median(floor_learn)
    play_s, episode_steps = statistics.median(play), statistics.median(steps)
    return {
        "config": name, "mode": ",".join(sorted({c.mode for c in ours.channels})) or "none",
        "num_envs": mc.num_envs, "max_steps": mc.max_steps, "epochs": mc.epochs,
        "minibatches": mc.minibatches,
        "env_steps_per_update": episode_steps,
        "ours_env_steps_per_cpu_s": statistics.median(full),
        "floor_env_steps_per_cpu_s": episode_steps / (play_s + floor_ms / 1000),
        "ours_play_ms": 1000 * play_s, "ours_learn_ms": ours_ms, "floor_learn_ms": floor_ms,
        "learn_ratio": ours_ms / floor_ms, "rounds": n_rounds, "updates_per_round": n,
        "per_round": {"ours_env_steps_per_cpu_s": full, "ours_learn_ms": [1000 * x for x in learn],
                      "floor_learn_ms": [1000 * x for x in floor_learn]},  # the spread the medians hide
        "floor_device": str(floor_device),
        "floor_clock": "wall" if floor_device.type == "cuda" else "process",
        "floor_adam": "torch.optim.Adam(fused=True)",
        "torch": torch.__version__, "threads": torch.get_num_threads(), "machine": machine(),
    }


def time_to_success(overrides: list[str]) -> dict[str, Any]:
    """Part (d): one full training run of :data:`SUCCESS_CONFIG` as ``train`` runs it (its held-out greedy
    evaluations included); the driver's ``time_to_success`` per threshold (null where not reached, or
    while the driver does not report it), the point at :data:`SUCCESS_AT`, and the run's CPU seconds."""
    from ..drivers.marl.train import train

    cfg = load_config(SUCCESS_CONFIG, [*overrides, "device=cpu"])
    t0 = time.process_time()
    result = train(cfg, Path("runs") / cfg.name, log=False, progress=False)
    reached = result.get("time_to_success")
    at = reached.get(f"{SUCCESS_AT:g}") if isinstance(reached, dict) else None
    return {"config": SUCCESS_CONFIG, "updates": cfg.trainer.steps, "threshold": SUCCESS_AT,
            "games": at and at.get("games"), "train_cpu_s": at and at.get("train_cpu_seconds"),
            "time_to_success": reached, "final_success_rate": result.get("success_rate"),
            "run_cpu_s": time.process_time() - t0, "train_seconds": result.get("train_seconds")}


def table(rows: list[dict]) -> str:
    head = (f"{'config':<22} {'mode':<8} {'E':>4} {'T':>3} {'ep':>3} {'ours st/s':>10} {'floor st/s':>10} "
            f"{'ours ms':>9} {'floor ms':>9} {'ratio':>6}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['config']:<22} {r['mode']:<8} {r['num_envs']:>4} {r['max_steps']:>3} "
                     f"{r['epochs']:>3} {r['ours_env_steps_per_cpu_s']:>10.0f} "
                     f"{r['floor_env_steps_per_cpu_s']:>10.0f} "
                     f"{r['ours_learn_ms']:>9.1f} {r['floor_learn_ms']:>9.1f} {r['learn_ratio']:>6.2f}")
    return "\n".join(lines)


def bench(quick: bool = False, out: Path | None = None, seeds: int | None = None, overrides: list[str] = (),
          only: list[str] | None = None) -> dict:
    """``dni-agents bench speed [--quick] [--only CONFIG,…] [--seeds ROUNDS] [device=cuda]``: JSON to ``out``,
    a table on stdout."""
    unknown = set(only or []) - set(CONFIGS)
    if unknown:
        raise ConfigError(f"--only: {', '.join(sorted(unknown))} is no marl job (jobs: {', '.join(CONFIGS)})")
    names = [c for c in CONFIGS if c in only] if only else list(QUICK_CONFIGS if quick else CONFIGS)
    report = Report("speed", quick, overrides, out)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for name in names:
            row = measure(name, quick, list(overrides), seeds)
            report.add(row, f"{name}: ours {row['ours_env_steps_per_cpu_s']:.0f} env steps/CPU-s, learning "
                            f"{row['ours_learn_ms']:.1f} ms vs floor {row['floor_learn_ms']:.1f} ms "
                            f"(x{row['learn_ratio']:.2f})")
        success = None
        if SUCCESS_CONFIG in names and not quick:
            success = time_to_success(list(overrides))
    finally:
        torch.set_num_threads(before)
    print(table(report.results))
    if success is not None:
        print(f"{SUCCESS_CONFIG}: held-out greedy success {SUCCESS_AT:g} after {success['games']} games, "
              f"{success['train_cpu_s']} training CPU-s (the run: {success['run_cpu_s']:.0f} CPU-s, "
              "evaluations included)")
    report.finish(time_to_success=success)
    return {"results": report.results, "time_to_success": success, "out": str(out) if out else None}
