"""The controls that tell whether a receiver uses the message, and what they are read with.

* Ablation at evaluation (:func:`ablation_permutation`): ``permute`` hands every environment copy the
  messages of another copy, ``zero`` silences the channel. A receiver that uses the message falls to its
  no-communication level: this, not a ``none`` run, is the no-communication reference.
* Mode ``none``: no gradient crosses, but the receiver still hears the sender's untrained code (faint:
  ``marl.message_init_gain``), which it can learn to read on a noiseless channel; it controls for learning
  through the channel, not for communication (``marl.message_init_gain=0`` with it: nothing is said).
* The frozen control: a fixed random code at the scale trained codes reach (``marl.message_rms``, set
  through the player: :func:`~dni_agents.drivers.marl.rollout.calibrate_messages`).
* :func:`channel_stats` and :class:`FidelityHistory`: the messages' scale and ĝ's fidelity over training.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ...config import ConfigError

if TYPE_CHECKING:
    from .parts import Channel, Episode

ABLATIONS = ("permute", "zero")


def ablation_permutation(copies: int, seed: int) -> torch.Tensor:
    """A fixed shuffle of the environment copies in which no copy keeps its own messages."""
    if copies < 2:
        raise ConfigError("eval --ablate permute: needs at least 2 environment copies (marl.eval_episodes)")
    g = torch.Generator().manual_seed(seed)
    return (torch.arange(copies) + torch.randint(1, copies, (), generator=g)) % copies


def channel_stats(ep: Episode, channels: list[Channel]) -> dict[str, dict[str, float]]:
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
