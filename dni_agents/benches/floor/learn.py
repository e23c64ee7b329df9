"""One PPO update of the floor, top to bottom (:func:`floor_update`): each network's episode in one batched
forward where the channels allow, the channels by hand, one backward for all networks and every ĝ, the
utility models' regression, one fused Adam step."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ...drivers.marl.parts import Episode
from .model import Floor, FloorChannel, FloorGroup


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


