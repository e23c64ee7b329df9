"""What a receiver's utility model sees (cDNI): the context of each message and its gate.

For each message, what the receiving member has when it hears it (its observation, what it heard, its
memory), then the gate a gated utility model multiplies ĝ by: per decision from the one that hears it (and
``utility.horizon`` more), the member's −∂loss/∂logits — taken from the PPO loss itself
(:func:`logit_sensitivity`) — and the ĝ of what it sends itself (:func:`sensitivities`: bootstrapping).
Known before any backward pass.
Messages that nobody hears get a zero context (and a zero gate).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
from gymnasium import spaces

from ...config import Config, ConfigError, interface_config
from .channels import transmitted
from .ppo import normalized_advantages, policy_objective

if TYPE_CHECKING:
    from .parts import Channel, Episode, Group

SYNTHETIC = ("dni", "cdni")  # modes whose sender gets a ĝ now


def gate_size(receiver: Group, bootstrap: int = 0, horizon: int = 0) -> int:
    """The entries of the receiver's loss sensitivity that end a cDNI context, per decision from the one
    that hears the message through ``horizon`` more (a recurrent receiver remembers it): one per action
    logit of a discrete policy (the advantage alone for a continuous one) and the ĝ its own outbound
    synthetic channels get (``bootstrap`` entries: what it says depends on what it heard)."""
    policy = 0
    if receiver.policy:
        policy = int(receiver.action_space.n) if isinstance(receiver.action_space, spaces.Discrete) else 1
    return (policy + bootstrap) * (horizon + 1)


def bootstrap_size(receiver: Group, specs: list[tuple]) -> int:
    """Entries of ĝ a receiver gets for its own messages: the sizes of its outbound synthetic channels
    (``specs``: (sender, receiver, mode, size, obs_slice) per channel)."""
    return sum(size for s, _, mode, size, _ in specs if s == receiver.name and mode in SYNTHETIC)


def context_size(c: Channel, receiver: Group, bootstrap: int = 0, horizon: int = 0) -> int:
    """Per message: the receiver's observation, what it heard, its memory (a recurrent actor's state
    before it hears), a continuous policy's action, then the gate (:func:`gate_size`)."""
    space = receiver.action_space
    extra = 0 if isinstance(space, spaces.Discrete) or not receiver.policy else int(np.prod(space.shape))
    memory = receiver.net.hidden if receiver.net.recurrent else 0
    return receiver.obs_dim + c.size + memory + extra + gate_size(receiver, bootstrap, horizon)


def gate_horizon(cfg: Config, c: Channel, receiver: Group) -> int:
    """``utility.horizon`` of channel ``c``: how many later decisions of a recurrent receiver a cdni gate
    holds (other modes have no gate: 0)."""
    horizon = interface_config(cfg, c.sender, c.receiver).utility.horizon
    if c.mode != "cdni":
        return 0
    if horizon and not receiver.net.recurrent:
        raise ConfigError(f"interfaces: {c.name}.utility.horizon {horizon} needs a receiver with memory "
                          "(marl.recurrent: true): only memory carries a message to later decisions")
    return horizon


def actor_memory(g: Group, hidden: torch.Tensor | None, copies: int) -> torch.Tensor:
    """(copies, members, hidden) a recurrent group's actor state before a step (zeros before the first)."""
    if hidden is None:
        return torch.zeros(copies, len(g.members), g.net.hidden)
    return hidden[:, : g.net.hidden].reshape(copies, len(g.members), -1)


def logit_sensitivity(
    g: Group, ep: Episode, mb: torch.Tensor, adv: torch.Tensor, entropy_coef: float, clip: float = 0.2,
) -> torch.Tensor:
    """(decisions, copies of ``mb``, members, k) group ``g``'s −∂loss/∂logits per decision, as played (PPO
    ratio 1, so ``clip`` changes nothing): the derivative of PPO's own per-decision objective
    (:func:`~dni_agents.drivers.marl.ppo.policy_objective`, policy term − ``entropy_coef`` × entropy) at the
    logits the rollout played with, i.e. Â (e_a − π) − c π (log π + H) for a discrete policy; the advantage
    alone (k = 1: −∂loss/∂log-probability) for a continuous one; 0 where the game has finished.
    ``adv``: normalised."""
    decisions = ep.decisions(g.period)
    alive = ep.alive[decisions][:, mb].float().view(len(decisions), -1, 1, 1)
    if not isinstance(g.action_space, spaces.Discrete):
        return adv.unsqueeze(-1) * alive
    with torch.enable_grad():
        logits = ep.probs[g.name][decisions][:, mb].clamp_min(1e-12).log().requires_grad_(True)
        dist = torch.distributions.Categorical(logits=logits, validate_args=False)
        action = ep.actions[g.name][decisions][:, mb]
        pg, entropy, _ = policy_objective(dist, action, dist.log_prob(action).detach(), adv, clip, True)
        (gradient,) = torch.autograd.grad((pg - entropy_coef * entropy).sum(), logits)
    return -gradient * alive


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
    c: Channel, receiver: Group, ep: Episode, steps: int | torch.Tensor, mb: torch.Tensor, n_senders: int,
    heard: torch.Tensor, sensitivity: Sensitivity,
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
    for k in range(sensitivity.horizon.get(c.name, 0) + 1):
        d = first + k
        if receiver.policy:  # past the last decision: zeros
            parts.append(pick(at(sensitivity.logits[receiver.name], d)))
        for out in receiver.outbound:
            if out.mode in SYNTHETIC:
                boot = sensitivity.bootstrap.get(out.name)
                parts.append(pick(at(boot, d * receiver.period)) if boot is not None
                             else heard.new_zeros(S, B, n_senders, out.size))
    return torch.cat(parts, -1).flatten(0, 2)


@torch.no_grad()
def sensitivities(
    cfg: Config, groups: list[Group], order: list[Group], ep: Episode, mb: torch.Tensor,
    gae: dict[str, tuple[torch.Tensor, torch.Tensor]],
) -> Sensitivity:
    """The :class:`Sensitivity` of minibatch ``mb``. ĝ of a message is what its utility model predicts
    from the rollout's message as heard (the replay's differs only by the epochs' updates), made from the
    last step back so that each prediction's gate holds the ĝ of what its receiver said later."""
    logits = {}
    for g in groups:
        if g.policy:
            alive = ep.alive[ep.decisions(g.period)][:, mb].float().unsqueeze(-1)
            adv = normalized_advantages(gae[g.name][0][:, mb], alive.expand_as(gae[g.name][0][:, mb]))
            logits[g.name] = logit_sensitivity(g, ep, mb, adv, cfg.marl.ent_coef, cfg.marl.clip)
    sensitivity = Sensitivity(logits)
    by_name = {g.name: g for g in groups}
    for g in groups:
        for c in g.inbound:
            if c.mode == "cdni":
                sensitivity.horizon[c.name] = gate_horizon(cfg, c, g)
                for out in (o for o in g.outbound if o.mode in SYNTHETIC):
                    shape = ep.messages[out.name].shape[2:]
                    sensitivity.bootstrap[out.name] = torch.zeros(ep.length, len(mb), *shape)
    for t in reversed(range(ep.length)):
        for g in reversed(order):  # a delay-0 receiver speaks after its sender
            for c in g.outbound:
                if c.name not in sensitivity.bootstrap or t + c.model.delay >= ep.length:
                    continue
                heard = transmitted(c, ep, t, mb, ep.messages[c.name][t, mb])
                context = None
                if c.mode == "cdni":
                    context = sender_context(c, by_name[c.receiver], ep, t, mb, heard.shape[1], heard,
                                             sensitivity)
                u = c.interface.utility
                g_hat = u(heard.flatten(0, 1), context).view_as(heard) * c.interface.scale
                if c.name in ep.outage:  # a message its channel did not carry gets no gradient: ĝ · 0
                    g_hat = g_hat * ep.outage[c.name][mb].view(-1, 1, 1)
                sensitivity.bootstrap[c.name][t] = g_hat
    return sensitivity
