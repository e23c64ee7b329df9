"""PPO's pieces, as CleanRL's ppo.py has them: GAE, advantages normalised per minibatch, and the clipped
objective. The policy part of the loss is one function (:func:`policy_objective`), which the cDNI gate
differentiates too, so the gate is the loss's own derivative."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .config import MarlConfig
    from .parts import Episode, Group

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


def normalized_advantages(adv: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Advantages standardised over the live decisions (``mask``), as the PPO loss uses them."""
    count = mask.sum().clamp_min(1)
    mean = (adv * mask).sum() / count
    std = (((adv - mean) ** 2 * mask).sum() / count).sqrt()
    return (adv - mean) / (std + 1e-8)


def policy_objective(
    dist: torch.distributions.Distribution, action: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor,
    clip: float, discrete: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per decision: the clipped policy-gradient loss, the entropy, and the log-probability of ``action``
    (``adv``: normalised advantages; ``old_logp``: as played). PPO's loss and the cDNI gate's
    −∂loss/∂logits (:func:`~dni_agents.drivers.marl.gates.logit_sensitivity`) both come from here."""
    logp, entropy = dist.log_prob(action), dist.entropy()
    if not discrete:
        logp, entropy = logp.sum(-1), entropy.sum(-1)
    ratio = (logp - old_logp).exp()
    pg = torch.max(-adv * ratio, -adv * ratio.clamp(1 - clip, 1 + clip))
    return pg, entropy, logp


def ppo_loss(
    mc: MarlConfig, g: Group, ep: Episode, mb: torch.Tensor, features: torch.Tensor | list[torch.Tensor],
    gae: tuple[torch.Tensor, torch.Tensor],
) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped PPO objective + value loss − entropy bonus over the decisions of live copies of minibatch
    ``mb``. ``features``: the network's features per decision, (decisions, copies × members, width), as the
    replay made them; ``gae``: (advantages, returns) per decision of every copy."""
    adv, returns = gae
    decisions = ep.decisions(g.period)
    feats = features if isinstance(features, torch.Tensor) else torch.stack(features)  # (D, B*n, H)
    D, B, n = len(decisions), len(mb), len(g.members)
    mask = ep.alive[decisions][:, mb].float().unsqueeze(-1).expand(D, B, n).reshape(D, B * n)
    action = ep.actions[g.name][decisions][:, mb].reshape(D, B * n, *ep.actions[g.name].shape[3:])
    old = ep.logp[g.name][decisions][:, mb].reshape(D, B * n)
    count = mask.sum().clamp_min(1)
    a = normalized_advantages(adv[:, mb].reshape(D, B * n), mask)
    pg, entropy, logp = policy_objective(g.net.dist(feats), action, old, a, mc.clip, g.net.discrete)
    value = g.net.normalized_value(feats)
    target = (returns[:, mb].reshape(D, B * n) - g.net.return_mean) / g.net.return_var.sqrt()
    v_loss = 0.5 * (value - target) ** 2
    pg_loss, v_loss, ent = ((x * mask).sum() / count for x in (pg, v_loss, entropy))
    loss = pg_loss + mc.vf_coef * v_loss - mc.ent_coef * ent
    with torch.no_grad():
        kl = (((logp - old).exp() - 1 - (logp - old)) * mask).sum() / count
    return loss, {"policy_loss": pg_loss.item(), "value_loss": v_loss.item(), "entropy": ent.item(),
                  "approx_kl": float(kl)}
