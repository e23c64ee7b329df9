"""The channels of the multi-agent driver: when a message is heard, what the channel does to it, what a
receiver's utility model sees (cDNI), and the controls that tell whether a receiver uses the message.

* ``delay`` 0: the receiver hears a message in the step it is sent, so senders act before their receivers
  (:func:`speaking_order`); ``delay`` 1 (default, as mpe2's own communication): the next step, the first
  step is silent.
* Noise and discretisation are the core's :class:`~dni_agents.core.ChannelModel`; the rollout draws the
  noise and keeps it, so the learner's replay hears exactly what was heard while playing.
* cDNI context (:func:`sender_context`): for each message, what the receiving member has when it hears
  it (its observation, what it heard, its memory), then the gate a gated utility model multiplies ĝ by:
  per decision from the one that hears it (and ``utility.horizon`` more), the member's −∂loss/∂logits and
  the ĝ of what it sends itself (:func:`sensitivities`: bootstrapping). Known before any backward pass.
  Messages that nobody hears get a zero context (and a zero gate).
* Ablation at evaluation: ``permute`` hands every environment copy the messages of another copy,
  ``zero`` silences the channel. A receiver that uses the message falls to its no-communication level.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from gymnasium import spaces

from ...config import Config, ConfigError, interface_config
from ...core import ChannelModel

ABLATIONS = ("permute", "zero")


def channel_model(cfg: Config, sender: str, receiver: str) -> ChannelModel:
    c = interface_config(cfg, sender, receiver).channel
    return ChannelModel(noise=c.noise, discretize=c.discretize, levels=c.levels, delay=c.delay,
                        outage=c.outage)


def speaking_order(groups: list[Any], channels: list[Any]) -> list[Any]:
    """The groups in an order in which every sender on a ``delay: 0`` channel acts before its receiver."""
    after = {g.name: {c.sender for c in channels if c.receiver == g.name and c.model.delay == 0
                      and c.interface is not None} for g in groups}
    order, placed = [], set()
    while len(order) < len(groups):
        ready = [g for g in groups if g.name not in placed and after[g.name] <= placed]
        if not ready:
            loop = sorted(g.name for g in groups if g.name not in placed)
            raise ConfigError(f"interfaces: the delay-0 channels among {', '.join(loop)} form a loop: each "
                              "would hear the other in the same step (set channel.delay: 1 on one of them)")
        order.append(ready[0])
        placed.add(ready[0].name)
    return order


def route(
    messages: torch.Tensor | None, sources: torch.Tensor, size: int, batch: int,
    device: torch.device | None = None,
) -> torch.Tensor:
    """What each receiving member hears: the message of the sender member ``sources`` names (-1: silence).
    A gather, so gradients flow back to exactly the message that was heard."""
    if messages is None:
        return torch.zeros(batch, sources.shape[1], size, device=device)
    padded = torch.cat([messages, messages.new_zeros(messages.shape[0], 1, size)], 1)
    index = torch.where(sources < 0, messages.shape[1], sources).to(messages.device)
    return padded.gather(1, index.unsqueeze(-1).expand(-1, -1, size))


def hear(
    c: Any, sent: torch.Tensor | None, noise: torch.Tensor | None, sources: torch.Tensor, batch: int,
    training: bool, ablate: str | None = None, perm: torch.Tensor | None = None,
    device: torch.device | None = None, up: torch.Tensor | None = None,
) -> torch.Tensor:
    """What the receiving members of channel ``c`` hear of the messages ``sent`` (copies, senders, size):
    through the channel (noise in training, discrete values at evaluation, silence in the copies where
    ``up`` is 0), then routed."""
    if sent is not None:
        sent = c.model.transmit(sent, noise, training, up)
        if ablate == "zero":
            sent = torch.zeros_like(sent)
        elif ablate == "permute":
            sent = sent[perm]
    return route(sent, sources, c.size, batch, device)


def transmitted(c: Any, ep: Any, t: int | slice, mb: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """What the receivers of ``c`` heard of the messages ``h`` (B, senders, size) sent at step ``t`` in the
    copies ``mb`` of episode ``ep``, or of a stack of them (S, B, senders, size) sent at the steps of the
    slice ``t``: through the noise the rollout drew, silent where its channel was down."""
    noise = ep.noise[c.name][t, mb] if c.name in ep.noise else None
    up = ep.outage[c.name][mb] if c.name in ep.outage else None
    if isinstance(t, slice):  # the channel's rows are the messages: one per (step, copy)
        up = None if up is None else up.repeat(len(h))
        return c.model.transmit(h.flatten(0, 1), None if noise is None else noise.flatten(0, 1),
                                up=up).view_as(h)
    return c.model.transmit(h, noise, up=up)


def ablation_permutation(copies: int, seed: int) -> torch.Tensor:
    """A fixed shuffle of the environment copies in which no copy keeps its own messages."""
    if copies < 2:
        raise ConfigError("eval --ablate permute: needs at least 2 environment copies (marl.eval_episodes)")
    g = torch.Generator().manual_seed(seed)
    return (torch.arange(copies) + torch.randint(1, copies, (), generator=g)) % copies


def normalized_advantages(adv: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Advantages standardised over the live decisions (``mask``), as the PPO loss uses them."""
    count = mask.sum().clamp_min(1)
    mean = (adv * mask).sum() / count
    std = (((adv - mean) ** 2 * mask).sum() / count).sqrt()
    return (adv - mean) / (std + 1e-8)


SYNTHETIC = ("dni", "cdni")  # modes whose sender gets a ĝ now


def gate_size(receiver: Any, bootstrap: int = 0, horizon: int = 0) -> int:
    """The entries of the receiver's loss sensitivity that end a cDNI context, per decision from the one
    that hears the message through ``horizon`` more (a recurrent receiver remembers it): one per action
    logit of a discrete policy (the advantage alone for a continuous one) and the ĝ its own outbound
    synthetic channels get (``bootstrap`` entries: what it says depends on what it heard)."""
    policy = 0
    if receiver.policy:
        policy = int(receiver.action_space.n) if isinstance(receiver.action_space, spaces.Discrete) else 1
    return (policy + bootstrap) * (horizon + 1)


def bootstrap_size(receiver: Any, specs: list[tuple]) -> int:
    """Entries of ĝ a receiver gets for its own messages: the sizes of its outbound synthetic channels
    (``specs``: (sender, receiver, mode, size, obs_slice) per channel)."""
    return sum(size for s, _, mode, size, _ in specs if s == receiver.name and mode in SYNTHETIC)


def context_size(c: Any, receiver: Any, bootstrap: int = 0, horizon: int = 0) -> int:
    """Per message: the receiver's observation, what it heard, its memory (a recurrent actor's state
    before it hears), a continuous policy's action, then the gate (:func:`gate_size`)."""
    space = receiver.action_space
    extra = 0 if isinstance(space, spaces.Discrete) or not receiver.policy else int(np.prod(space.shape))
    memory = receiver.net.hidden if receiver.net.recurrent else 0
    return receiver.obs_dim + c.size + memory + extra + gate_size(receiver, bootstrap, horizon)


def gate_horizon(cfg: Config, c: Any, receiver: Any) -> int:
    """``utility.horizon`` of channel ``c``: how many later decisions of a recurrent receiver a cdni gate
    holds (other modes have no gate: 0)."""
    horizon = interface_config(cfg, c.sender, c.receiver).utility.horizon
    if c.mode != "cdni":
        return 0
    if horizon and not receiver.net.recurrent:
        raise ConfigError(f"interfaces: {c.name}.utility.horizon {horizon} needs a receiver with memory "
                          "(marl.recurrent: true): only memory carries a message to later decisions")
    return horizon


def actor_memory(g: Any, hidden: torch.Tensor | None, copies: int) -> torch.Tensor:
    """(copies, members, hidden) a recurrent group's actor state before a step (zeros before the first)."""
    if hidden is None:
        return torch.zeros(copies, len(g.members), g.net.hidden)
    return hidden[:, : g.net.hidden].reshape(copies, len(g.members), -1)


def logit_sensitivity(
    g: Any, ep: Any, mb: torch.Tensor, adv: torch.Tensor, entropy_coef: float,
) -> torch.Tensor:
    """(decisions, copies of ``mb``, members, k) group ``g``'s −∂loss/∂logits per decision, as played (PPO
    ratio 1): Â (e_a − π) − c π (log π + H) for a discrete policy (the entropy bonus has a gradient too), the
    advantage alone (k = 1) for a continuous one; 0 where the game has finished. ``adv``: normalised."""
    decisions = ep.decisions(g.period)
    alive = ep.alive[decisions][:, mb].float().view(len(decisions), -1, 1, 1)
    if not isinstance(g.action_space, spaces.Discrete):
        return adv.unsqueeze(-1) * alive
    probs = ep.probs[g.name][decisions][:, mb]
    onehot = F.one_hot(ep.actions[g.name][decisions][:, mb], probs.shape[-1]).float()
    logp = probs.clamp_min(1e-12).log()
    entropy = -(probs * logp).sum(-1, keepdim=True)
    return (adv.unsqueeze(-1) * (onehot - probs) - entropy_coef * probs * (logp + entropy)) * alive


@dataclass
class Sensitivity:
    """What the receivers' losses are sensitive to in one minibatch, known before any backward pass: per
    group its −∂loss/∂logits (:func:`logit_sensitivity`); per synthetic channel the ĝ each of its messages
    gets (steps, copies, senders, size); per cdni channel how many of its receiver's later decisions the
    gate covers."""

    logits: dict[str, torch.Tensor]
    bootstrap: dict[str, torch.Tensor] = field(default_factory=dict)
    horizon: dict[str, int] = field(default_factory=dict)


def sender_context(
    c: Any, receiver: Any, ep: Any, steps: int | torch.Tensor, mb: torch.Tensor, n_senders: int,
    heard: torch.Tensor, sens: Sensitivity,
) -> torch.Tensor:
    """The cDNI context of the messages ``c`` sends at step ``steps`` (rows: copy × sender member), or at
    each of the steps (S,) of a tensor (rows step-major): what the member that hears each has then (step
    ``t + delay``). ``heard``: the messages as heard, (B, senders, size), or (S, B, senders, size). The gate,
    last, per decision of that member from the one that hears it: its −∂loss/∂logits and the ĝ of what it
    sends then (the true gradient it replies contains it)."""
    if not isinstance(steps, torch.Tensor):
        steps, heard = torch.tensor([steps]), heard.unsqueeze(0)
    when = steps + c.model.delay  # (S,)
    S, B = len(steps), len(mb)
    rows = (when.view(-1, 1), mb.view(1, -1))  # index (step, copy) -> (S, B)
    sources = ep.sources[c.name][rows]  # (S, B, n_receivers)
    match = sources.unsqueeze(2) == torch.arange(n_senders).view(1, 1, -1, 1)  # (S, B, senders, receivers)
    heard_by = match.any(-1).unsqueeze(-1)
    member = match.float().argmax(-1).unsqueeze(-1)  # the first receiving member who hears each sender member

    def pick(x: torch.Tensor) -> torch.Tensor:  # (S, B, receivers, k) -> (S, B, senders, k), 0 if unheard
        return x.gather(2, member.expand(-1, -1, -1, x.shape[-1])) * heard_by

    def at(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:  # x[index] (copies mb), 0 past its end
        padded = torch.cat([x, x.new_zeros(1, *x.shape[1:])])
        return padded[index.clamp(max=len(x)).view(-1, 1), torch.arange(B).view(1, -1)]

    parts = [pick(ep.obs[receiver.name][rows]), heard * heard_by]
    if receiver.name in ep.memory:
        parts.append(pick(ep.memory[receiver.name][rows]))
    if receiver.policy and not isinstance(receiver.action_space, spaces.Discrete):
        parts.append(pick(ep.actions[receiver.name][rows]))
    first = -(-when // receiver.period)  # a message heard between decisions counts from the next one
    for k in range(sens.horizon.get(c.name, 0) + 1):
        d = first + k
        if receiver.policy:  # past the last decision: zeros
            parts.append(pick(at(sens.logits[receiver.name], d)))
        for out in receiver.outbound:
            if out.mode in SYNTHETIC:
                boot = sens.bootstrap.get(out.name)
                parts.append(pick(at(boot, d * receiver.period)) if boot is not None
                             else heard.new_zeros(S, B, n_senders, out.size))
    return torch.cat(parts, -1).flatten(0, 2)


@torch.no_grad()
def sensitivities(
    cfg: Config, groups: list[Any], order: list[Any], ep: Any, mb: torch.Tensor, gae: dict[str, tuple],
) -> Sensitivity:
    """The :class:`Sensitivity` of minibatch ``mb``. ĝ of a message is what its utility model predicts
    from the rollout's message as heard (the replay's differs only by the epochs' updates), made from the
    last step back so that each prediction's gate holds the ĝ of what its receiver said later."""
    logits = {}
    for g in groups:
        if g.policy:
            alive = ep.alive[ep.decisions(g.period)][:, mb].float().unsqueeze(-1)
            adv = normalized_advantages(gae[g.name][0][:, mb], alive.expand_as(gae[g.name][0][:, mb]))
            logits[g.name] = logit_sensitivity(g, ep, mb, adv, cfg.marl.ent_coef)
    sens = Sensitivity(logits)
    by_name = {g.name: g for g in groups}
    for g in groups:
        for c in g.inbound:
            if c.mode == "cdni":
                sens.horizon[c.name] = gate_horizon(cfg, c, g)
                for out in (o for o in g.outbound if o.mode in SYNTHETIC):
                    shape = ep.messages[out.name].shape[2:]
                    sens.bootstrap[out.name] = torch.zeros(ep.length, len(mb), *shape)
    for t in reversed(range(ep.length)):
        for g in reversed(order):  # a delay-0 receiver speaks after its sender
            for c in (c for c in g.outbound if c.name in sens.bootstrap and t + c.model.delay < ep.length):
                heard = transmitted(c, ep, t, mb, ep.messages[c.name][t, mb])
                context = None
                if c.mode == "cdni":
                    context = sender_context(c, by_name[c.receiver], ep, t, mb, heard.shape[1], heard, sens)
                u = c.interface.utility
                g_hat = u(heard.flatten(0, 1), context).view_as(heard) * c.interface.scale
                if c.name in ep.outage:  # a message its channel did not carry gets no gradient: ĝ · 0
                    g_hat = g_hat * ep.outage[c.name][mb].view(-1, 1, 1)
                sens.bootstrap[c.name][t] = g_hat
    return sens


@torch.no_grad()
def calibrate_messages(player: Any, rms: float, seed: int) -> dict[str, float]:
    """The frozen control's matched scale: scale each message head (weight and bias) so that its messages
    on the first observations of every environment copy have RMS ``rms`` per component (before any squash).
    Returns each channel's factor."""
    obs, _ = player.envs.reset(seed=seed)
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


def channel_stats(ep: Any, channels: list[Any]) -> dict[str, dict[str, float]]:
    """Per channel of an episode: the RMS of the messages as sent (before any squash: the scale the frozen
    control is matched to) and, discretised, bits per component and how often noise flipped a symbol."""
    out = {}
    for c in channels:
        if c.interface is not None:
            keep = ep.alive[..., None].expand(ep.messages[c.name].shape[:3])
            sent = ep.messages[c.name][keep]
            noise = ep.noise[c.name][keep] if c.name in ep.noise else None
            out[c.name] = {"message_rms": float(sent.pow(2).mean().sqrt()), **c.model.stats(sent, noise)}
    return out


class FidelityHistory:
    """ĝ's fidelity per channel on the updates where it was measured (held out: the first pass over a
    fresh episode, before the utility model has regressed onto any of its targets), and the messages'
    RMS (the scale the frozen control is matched to)."""

    KEYS = ("grad_cosine", "grad_r2", "message_rms")

    def __init__(self) -> None:
        self.rows: list[tuple[int, str, dict[str, float]]] = []

    def add(self, update: int, stats: dict[str, dict[str, float]]) -> None:
        for name, s in stats.items():
            kept = {k: v for k, v in s.items() if k in self.KEYS}
            if kept:
                self.rows.append((update, name, kept))

    def second_half(self, updates: int) -> dict[str, float]:
        """Each channel's mean cosine and message RMS, and median R², over the second half of training (an
        R² is unbounded below: one update whose targets are nearly 0 would decide a mean)."""
        out: dict[str, float] = {}
        for key in self.KEYS:
            per: dict[str, list[float]] = {}
            for update, name, s in self.rows:
                if update >= updates // 2 and key in s:
                    per.setdefault(name, []).append(s[key])
            for name, values in per.items():
                out[f"{name}/{key}"] = (float(torch.tensor(values).median()) if key == "grad_r2"
                                        else sum(values) / len(values))
        return out
